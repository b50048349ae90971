"""The black-box ranker: a pure reply parser, the API client, and the embedded ``transformers
serve`` server used when no external API is configured (its templates are :mod:`cyclealign.templates`).

Modules: :mod:`~cyclealign.ranker.ranking` (the pure ranking protocol), :mod:`~cyclealign.ranker.http`
(transport and errors), :mod:`~cyclealign.ranker.endpoint` (the chat endpoint: cache, budget,
limits, workers), :mod:`~cyclealign.ranker.client` (the :class:`~cyclealign.ranker.client.Ranker`), and the rest.

Each name is imported from the module that defines it; this package imports nothing, so that
importing one light submodule (``cyclealign.ranker.ranking``, ``cyclealign.ranker.parse``) does
not pull in the HTTP stack (``openai``, ``tenacity``, ``aiolimiter``).
"""
