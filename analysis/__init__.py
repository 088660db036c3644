"""danescan's analysis: SQL aggregation (:mod:`analysis.load`), the published measures
(:mod:`analysis.metrics`), the mail-provider PSL (:mod:`analysis.psl`), the CSV/PNG report
(:mod:`analysis.report`) and its ``danescan report`` subcommand (:mod:`analysis.cli`)."""
