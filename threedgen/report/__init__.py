"""Run reports (``RUN/report.html``) and an index of runs: ``report.build``."""
