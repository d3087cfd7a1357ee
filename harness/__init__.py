"""What measures: CLI, scenarios, the open-loop driver, metrics, results, reports, the regression gate."""
