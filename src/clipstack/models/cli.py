"""`clipstack models`: list the bundled model configs, or show one config as JSON."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list the bundled model configs (or print one with --show NAME)")
    parser.add_argument("--show", metavar="NAME", help="print this config (name, JSON path or model folder)")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    import json

    from clipstack.models.config import ModelCfg, list_models
    from clipstack.models.factory import resolve_config

    if args.show:
        model_cfg, _, _, source = resolve_config(args.show)
        ModelCfg.from_dict(model_cfg, source=source)  # print only a config create_model would build
        print(json.dumps(model_cfg, indent=2))
        return 0
    print(f"{'name':<20} {'image':>6} {'patch':>5} {'vision':>12} {'text':>12} {'embed':>5}  loss")
    for name in list_models():
        cfg, _, _, _ = resolve_config(name)
        v, t = cfg["vision_cfg"], cfg["text_cfg"]
        loss = "sigmoid" if cfg.get("init_logit_bias") is not None else "softmax"
        print(f"{name:<20} {v['image_size']:>6} {str(v.get('patch_size') or 'RN'):>5} "
              f"{str(v['width']) + 'x' + _depth(v['layers']):>12} "
              f"{str(t['width']) + 'x' + str(t['layers']):>12} {cfg['embed_dim']:>5}  {loss}")
    return 0


def _depth(layers: int | list[int]) -> str:
    """12 for a ViT, 3-4-6-3 for a ResNet's stages."""
    return "-".join(map(str, layers)) if isinstance(layers, list) else str(layers)
