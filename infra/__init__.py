"""The Pulumi program of dualcache: one AI Gateway, six Workers KV namespaces and the API Worker per stack.

``__main__.py`` is what the Pulumi CLI runs; :mod:`infra.program` builds the resources;
:mod:`infra.plan` runs the same program offline under Pulumi's mock engine.
"""
