"""``clipseg serve``: the model loaded once, masks over HTTP and in the browser.

`create_app` builds the FastAPI app (`app`), `MicroBatcher` runs concurrent requests in one model
call (`batching`), `library.run_job` is the one call into the library the CLI uses (`library`);
`ray` runs the same app as Ray Serve replicas (``clipseg serve --ray``, ``serve run clipseg_cli.serve.ray:app``).
Needs the ``serve`` extra: ``pip install "clipseg-cli[serve]"`` (``serve-ray`` for `ray`).
"""
