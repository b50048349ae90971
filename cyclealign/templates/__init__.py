"""The ranker and judge templates (one-to-one with ``cyclealign templates``): the ``.jinja``
overlay, a user folder over the shipped one (:mod:`~cyclealign.templates.files`), the ranker's
templates (:mod:`~cyclealign.templates.ranker`), the pairwise judge's
(:mod:`~cyclealign.templates.judge`), the load-time check (:mod:`~cyclealign.templates.check`)
and what a call would send (:mod:`~cyclealign.templates.render`)."""
