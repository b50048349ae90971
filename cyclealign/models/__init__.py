"""The white-box model: resolving and loading it (:mod:`~cyclealign.models.loading`), its KV cache
(:mod:`~cyclealign.models.kv_cache`), packed rows (:mod:`~cyclealign.models.packing`) and token
log-probabilities (:mod:`~cyclealign.models.logprobs`). Nothing here is imported by the package
``__init__``: each module loads torch itself."""
