from segbeam import startup

startup.main()
