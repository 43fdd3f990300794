"""Jobs: one module per job kind (convert, qat, compress) over :mod:`tflq.jobs.common`, which
owns evaluation, the report skeleton, gates and output writing. Every job returns a
:class:`tflq.jobs.common.JobResult`."""

__all__: list[str] = []  # a namespace package of modules; import them by name
