"""timm backbones: importing this package registers them with timm (``@register_model``)."""
