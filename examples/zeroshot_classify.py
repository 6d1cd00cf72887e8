"""Classify your own images zero-shot with a CLIP-Mamba model and your own class names.

    python examples/zeroshot_classify.py --model vmamba-s --pretrained yfcc15m \
        --classes "a cat" "a dog" "a truck" -- photo1.jpg photo2.png

``--pretrained`` is a release tag (``yfcc15m`` = EMA towers, ``yfcc15m-online``; downloaded once from
Hugging Face ``weiquan/mamba-clip``) or a local checkpoint (a converted ``.safetensors``, a release
``.pt`` or an open_clip_train checkpoint), or ``none`` for random weights (the default for models
without a release tag, such as ``vmamba-nano``; the probabilities are then meaningless, which is
fine for a smoke test). Prints the top classes with their probabilities per image.
"""

import argparse
import sys

import open_clip
import torch
from PIL import Image

import mamba_clip
from mamba_clip.openclip_ext.configs import our_model_names

mamba_clip.register()  # our model configs and tags (done automatically when installed)

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--model", default="vmamba-s", help="open_clip model name (default: %(default)s)")
p.add_argument("--pretrained", default=None, help="tag, checkpoint path or 'none' (default: the model's first "
               "tag, e.g. yfcc15m; random weights for a model without tags)")
p.add_argument("--classes", nargs="+", required=True, help="class names (or short descriptions)")
p.add_argument("--template", default="a photo of {}.", help="prompt template, {} is the class name")
p.add_argument("--image-size", type=int, default=None, help="only for models trained at another size")
p.add_argument("--top", type=int, default=3, help="classes to print per image (default: %(default)s)")
p.add_argument("images", nargs="+", help="image files")
args = p.parse_args()

if args.model not in open_clip.list_models():
    p.error(f"--model {args.model!r} is not an open_clip model; ours: {', '.join(our_model_names())}")
tags = open_clip.list_pretrained_tags_by_model(args.model)
if args.pretrained is None:
    args.pretrained = tags[0] if tags else "none"
    if not tags:
        print(f"warning: {args.model} has no pretrained tag; using random weights (--pretrained none)",
              file=sys.stderr)
if args.pretrained.lower() in ("none", ""):
    args.pretrained = None

kwargs = {"force_image_size": args.image_size} if args.image_size else {}
model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained, **kwargs)
model.eval()
tokenizer = open_clip.get_tokenizer(args.model)

with torch.no_grad():
    text = model.encode_text(tokenizer([args.template.format(c) for c in args.classes]), normalize=True)
    images = torch.stack([preprocess(Image.open(path).convert("RGB")) for path in args.images])
    image = model.encode_image(images, normalize=True)
    probs = (model.logit_scale.exp() * image @ text.T).softmax(dim=-1)

for path, row in zip(args.images, probs):
    top = row.topk(min(args.top, len(args.classes)))
    ranked = ", ".join(f"{args.classes[i]} {p:.2f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
    print(f"{path}: {ranked}")
