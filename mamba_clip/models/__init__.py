"""timm backbones: importing this package registers them with timm (``@register_model``)."""
from . import simba  # noqa: F401  (SiMBA, issue 4)
from .vmamba import VMamba  # noqa: F401  (VMamba, issue 3)
