"""Everything that connects our models to open_clip. ``registry.py`` is the only module that touches
open_clip internals."""
