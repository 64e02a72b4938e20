"""protoc-gen-quicflow: the protoc plugin that writes QuicFlow stubs and service bases.

Theory of operation
-------------------

protoc hands the plugin a ``CodeGeneratorRequest`` on stdin and expects a
``CodeGeneratorResponse`` on stdout (``__main__``). Everything in between is
pure and runs in three strictly separate steps, as in betterproto's compiler:

1. ``options`` turns the plugin parameter (``--quicflow_opt=...``) into an
   `Options` value, or fails with a message naming the bad option.
2. ``parse`` walks the descriptors and builds the model (``model``): frozen
   dataclasses for each `File`, `Service` and `Method`. Every name the output
   will use (method names, import aliases, constants) is decided here by
   ``naming``, so the model already holds final Python spellings.
3. ``render`` feeds the model to the jinja2 templates in ``templates/``. It
   renders the body first and the header (imports, ``__all__``) after it,
   so the header lists exactly what the body used.

The plugin reads no files, runs no formatter and calls no subprocess: the
same request always gives byte-for-byte the same response.
"""

__version__ = "0.1.0"
"""The plugin version, written into every generated file's header."""
