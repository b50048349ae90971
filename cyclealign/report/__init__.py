"""The HTML report of a run (``cyclealign report``): the page (:mod:`~cyclealign.report.html`),
its plots (:mod:`~cyclealign.report.plots`) and its tables and sample blocks
(:mod:`~cyclealign.report.sections`)."""
