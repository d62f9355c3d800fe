"""Ready-made queries over a run's views (`segbeam query OUTPUT --example NAME`), the same ones
docs/output-schema.md shows. They assume the default model's classes where they name one (pet)."""

EXAMPLES = {
  "pets-over-half": (
    "Images where the pet covers more than half the frame",
    "SELECT image_id, round(coverage_pet, 3) AS coverage_pet, width, height\n"
    "FROM segments WHERE coverage_pet > 0.5 ORDER BY coverage_pet DESC",
  ),
  "least-confident": (
    "The 20 images the model is least sure about",
    "SELECT image_id, round(mean_confidence, 3) AS confidence, dominant_class\n"
    "FROM segments ORDER BY mean_confidence ASC, image_id LIMIT 20",
  ),
  "coverage-histogram": (
    "How many images fall in each tenth of coverage, per class",
    "SELECT replace(class, 'coverage_', '') AS class,\n"
    "       least(floor(coverage * 10), 9) / 10 AS coverage_from, count(*) AS images\n"
    "FROM (UNPIVOT (SELECT image_id, COLUMNS('^coverage_') FROM segments)\n"
    "      ON COLUMNS('^coverage_') INTO NAME class VALUE coverage)\n"
    "GROUP BY ALL ORDER BY class, coverage_from",
  ),
  "errors-by-reason": (
    "Inputs that produced no mask, by stage and reason",
    "SELECT stage, error_type, count(*) AS inputs, any_value(message) AS example_message\n"
    "FROM errors GROUP BY ALL ORDER BY inputs DESC",
  ),
}
