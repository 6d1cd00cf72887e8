"""Classify your own images zero-shot with a CLIP-Mamba model and your own class names.

    python examples/zeroshot_classify.py --model vmamba-s --pretrained yfcc15m \
        --classes "a cat" "a dog" "a truck" -- photo1.jpg photo2.png

``--pretrained`` is a release tag (``yfcc15m`` = EMA towers, ``yfcc15m-online``; downloaded once from
Hugging Face ``weiquan/mamba-clip``) or a local checkpoint (a converted ``.safetensors``, a release
``.pt`` or an open_clip_train checkpoint). Prints the top classes with their probabilities per image.
"""

import argparse

import open_clip
import torch
from PIL import Image

import mamba_clip

mamba_clip.register()  # our model configs and tags (done automatically when installed)

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--model", default="vmamba-s")
p.add_argument("--pretrained", default="yfcc15m", help="tag or checkpoint path")
p.add_argument("--classes", nargs="+", required=True, help="class names (or short descriptions)")
p.add_argument("--template", default="a photo of {}.", help="prompt template, {} is the class name")
p.add_argument("--image-size", type=int, default=None, help="only for models trained at another size")
p.add_argument("--top", type=int, default=3)
p.add_argument("images", nargs="+")
args = p.parse_args()

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
