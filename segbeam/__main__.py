from segbeam import console

console.main()
