"""The `atlas` command (its usage is in the README). Heavy modules are imported per subcommand.

Exit codes: 0 success, 2 bad input or usage (one line on stderr), 1 unexpected failure
(set ATLAS_DEBUG=1 to see the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import AtlasInputError, first_line
from .interrupt import recorded


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _protected(bundle, *given: tuple[str, str | None]) -> list[tuple[str, str | None]]:
    """What a command that reads `bundle` must never write over: the bundle, the footage it
    was fitted from, and the command's other inputs, as (label, path) pairs."""
    return [("the bundle", str(bundle.path)), ("the bundle's source footage", bundle.meta.source.path), *given]


def _output(args: argparse.Namespace, protected: list[tuple[str, str | None]]) -> "Path":
    """The resolved -o path, refused when it is, holds or lies in a protected input."""
    from .io import check_not_input, output_path

    out = output_path(args.output)
    check_not_input(out, protected)
    return out


def cmd_fit(args: argparse.Namespace) -> int:
    from .train import fit

    bundle = fit(
        args.video, args.output, args.config, args.set, masks=args.masks, flow=args.flow, device=args.device,
        frames=args.frames, size=args.size, iters=args.iters, time_budget=args.time_budget, seed=args.seed,
        resume=args.resume, quiet=args.quiet, raft_weights=args.raft_weights, sam_checkpoint=args.sam_checkpoint,
        sam_prompt=args.sam_prompt, allow_gaps=args.allow_gaps,
    )
    m = bundle.meta.metrics
    _say(args, f"wrote {bundle.path}: mean PSNR {m['psnr_mean']:.2f} dB after {m['iterations']} iterations "
               f"({bundle.meta.timings['fit_s']:.0f} s)")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .bundle import AtlasBundle
    from .io import output_lock, write_video

    bundle = AtlasBundle.load(args.bundle)
    out = _output(args, _protected(bundle))
    with output_lock(out, "atlas render"):
        write_video(bundle.rendered_frames(), out, fps=bundle.fps)
    _say(args, f"wrote {out} ({bundle.num_frames} frames)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from propagation.export import export

    from .bundle import AtlasBundle
    from .io import output_lock

    bundle = AtlasBundle.load(args.bundle)
    out = _output(args, _protected(bundle, ("--source", args.source)))
    with output_lock(out, "atlas export"):
        export(bundle, out, bundle.size if args.fitted_size else None, args.matte, args.source)
    _say(args, f"wrote {out}")
    return 0


def _pairs(items: list[str], flag: str, key_type: type = str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise AtlasInputError(f"{flag} expects KEY=PATH, got {item!r}")
        try:
            out[key_type(key)] = value
        except ValueError:
            raise AtlasInputError(f"{flag} {item}: {key!r} is not a frame index") from None
    return out


def cmd_edit(args: argparse.Namespace) -> int:
    from .bundle import AtlasBundle
    from .io import check_not_input, check_replaceable, output_lock, read_video

    bundle = AtlasBundle.load(args.bundle)
    pairs = [_pairs(args.atlas, "--atlas"), _pairs(args.keyframe, "--keyframe", int), _pairs(args.keyframe_mask, "--keyframe-mask", int)]
    flags = ("source", "region_mask", "shape_mask", "sam_checkpoint", "model", "controlnet", "annotator_weights")
    protected = _protected(bundle, *((f"--{f.replace('_', '-')}", getattr(args, f)) for f in flags),
                           *((f"{flag} {key}", path) for flag, given in zip(("--atlas", "--keyframe", "--keyframe-mask"), pairs)
                             for key, path in given.items()))
    out = _output(args, protected)
    edits_dir = out.with_name(out.stem + "_atlas")
    keys_dir = out.with_name(out.stem + "_keyframes")
    for folder in (edits_dir, keys_dir):  # before any generation: fail fast, not after minutes of sampling
        check_not_input(folder, protected)
        check_replaceable(folder, r".+\.png")
    frames = None
    if args.source:
        frames = read_video(args.source, frames=tuple(bundle.meta.source.frames), size=bundle.size).frames
    prompt, options = _prompt_options(args, bundle)
    with output_lock(out, "atlas edit"):
        _write_edit(args, bundle, pairs, prompt, options, frames, out, edits_dir, keys_dir)
    return 0


def _write_edit(args: argparse.Namespace, bundle, pairs: list[dict], prompt, options: dict, frames, out: Path, edits_dir: Path,
                keys_dir: Path) -> None:
    """Run the edit and write the video, the edited atlases and any generated keyframes."""
    from editing import edit, edited_textures

    from .io import atomic_path, write_png, write_video

    result = edit(bundle, atlas=pairs[0], keyframes=pairs[1], keyframe_masks=pairs[2], prompt=prompt, method=args.method,
                  mode=args.mode, frames=frames, matte=args.matte, **options)
    write_video(result.iter_frames(), out, fps=bundle.fps)
    with atomic_path(edits_dir, is_dir=True) as tmp:
        rendered = result.bundle or bundle  # its atlas alpha follows a re-fitted silhouette
        for name, edited in edited_textures(rendered, result.edits).items():
            write_png(tmp / f"{name}.png", np.concatenate([edited, rendered.textures[name][..., 3:]], axis=-1))
            write_png(tmp / f"{name}_edit.png", result.edits[name])
    if result.keyframes:
        with atomic_path(keys_dir, is_dir=True) as tmp:
            for name, image in result.keyframes.items():
                write_png(tmp / f"{name}.png", image)
    extra = f" and the generated keyframes in {keys_dir}" if result.keyframes else ""
    _say(args, f"wrote {out} ({bundle.num_frames} frames), the edited atlases in {edits_dir}{extra}")


PROMPT_OPTIONS = ("model", "controlnet", "annotator", "annotator_weights", "strength", "steps", "guidance", "seed", "negative_prompt",
                  "resolution", "region_mask", "sam_checkpoint", "sam_prompt", "keyframe_stride", "max_keyframes", "lora_steps",
                  "source_prompt", "shape_mask", "refit_steps", "inpaint")


def _prompt_options(args: argparse.Namespace, bundle) -> tuple[str | dict[str, str] | None, dict]:
    """The prompt (a dict when --background-prompt adds a second layer) and editor options."""
    given = {k: getattr(args, k) for k in PROMPT_OPTIONS if getattr(args, k) is not None}
    runtime = {k: getattr(args, k) for k in ("device", "dtype") if getattr(args, k) is not None}
    runtime.update({k: True for k in ("attention_slicing", "vae_tiling", "cpu_offload") if getattr(args, k)})
    if not args.prompt:
        if args.background_prompt:
            raise AtlasInputError("--background-prompt goes with --prompt (the edit of the --layer)")
        if given or runtime or args.layer:
            raise AtlasInputError("--model, --strength and the other diffusion options need --prompt")
        return None, {}
    from editing import default_layer
    from editing.models import Runtime

    prompt: str | dict[str, str] = args.prompt
    if args.background_prompt:
        layer = args.layer or default_layer(bundle)
        if layer == "background":
            raise AtlasInputError("--background-prompt needs --prompt to edit a foreground layer")
        prompt = {layer: args.prompt, "background": args.background_prompt}
    elif args.layer:
        given["layer"] = args.layer
    return prompt, {**given, "runtime": Runtime(quiet=args.quiet, **runtime)}


def cmd_info(args: argparse.Namespace) -> int:
    from .bundle import AtlasBundle

    info = AtlasBundle.load(args.bundle).info()
    if args.json:
        print(json.dumps(info))
        return 0
    src, met = info["source"], info["metrics"]
    print(f"bundle:    {info['path']} (format {info['format_version']}, atlas {info['tool_version']})")
    print(f"source:    {src['path']}  frames {src['frames'][0]}:{src['frames'][1]}  {src['size'][0]}x{src['size'][1]} @ {src['fps']:g} fps")
    for layer in info["layers"]:
        print(f"layer:     {layer['name']:<14} atlas {layer['atlas_size'][0]}x{layer['atlas_size'][1]}")
    print(f"quality:   mean PSNR {met['psnr_mean']:.2f} dB (min {min(met['psnr_per_frame']):.2f}, max {max(met['psnr_per_frame']):.2f})")
    print("per frame: " + " ".join(f"{p:.1f}" for p in met["psnr_per_frame"]))
    gains = met.get("shading_gain_per_frame")
    if gains:
        lo, hi = int(np.argmin(gains)), int(np.argmax(gains))
        print(f"shading:   mean gain {gains[lo]:.2f} (frame {lo}) to {gains[hi]:.2f} (frame {hi}); the atlas holds the shot's average")
    for layer in info["layers"]:
        print(f"mapping:   {layer['name']:<14} {_mapping_quality(met.get('layers', {}).get(layer['name'], {}))}")
    for line in met.get("warnings", []):
        print(f"warning:   {line}")
    print(f"fit:       {met['iterations']} iterations, {info['timings']['fit_s']:.1f} s on {info['device']}, encoding backend {info['encoding_backend']}")
    print(f"inputs:    flow {info['preprocess']['flow']}, masks {info['preprocess']['masks']}, seed {info['seed']}")
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    from .bundle import AtlasBundle
    from .io import output_lock
    from .track_io import parse_grid, parse_point, read_points_csv, write_tracks

    bundle = AtlasBundle.load(args.bundle)
    out = _output(args, _protected(bundle, ("--points", args.points)))
    size = bundle.source_size if args.source_size else bundle.size
    if sum(x is not None and x != [] for x in (args.point, args.points, args.grid)) != 1:
        raise AtlasInputError("give the points to track one way: --point X,Y[@T] (repeatable), --points FILE.csv or --grid NxM[@T]")
    points = ([parse_point(p) for p in args.point] if args.point else read_points_csv(args.points) if args.points
              else parse_grid(args.grid, *size))
    tracks = bundle.track(points, layer=args.layer, source_size=args.source_size)
    with output_lock(out, "atlas track"):
        write_tracks(tracks, out, size, first_frame=args.first_frame)
    seen = tracks.visible.mean() * 100
    _say(args, f"wrote {out}: {len(points)} tracks through {bundle.num_frames} frames, visible {seen:.0f}% of the time")
    return 0


def _mapping_quality(q: dict) -> str:
    """One layer's mapping-quality line for `atlas info` (n/a where no pixel measured it)."""
    def num(key: str, fmt: str, scale: float = 1.0) -> str:
        value = q.get(key)
        return format(scale * value, fmt) if isinstance(value, (int, float)) else "n/a"

    line = (f"flow drift {num('flow_consistency_px_mean', '.2f')} px (p95 {num('flow_consistency_px_p95', '.2f')}), "
            f"long-range {num('long_range_px_mean', '.2f')} px (p95 {num('long_range_px_p95', '.2f')}), "
            f"unreliable {num('unreliable_fraction', '.1f', 100.0)}% of the atlas")
    if "motion_model" in q:
        extent = q.get("extent_frames") or [0, 0]
        line += f", {q['motion_model']} motion, extent {extent[0]:.1f} x {extent[1]:.1f} frames"
        line += ", DEGENERATE" if q.get("degenerate") else ""
    if "blur_max" in q:
        line += f", blurred up to {num('blur_max', '.1f')}x its footprint (frame {num('blur_frame', '.0f')})"
    return line


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    paths = run_demo(Path(args.output), quiet=args.quiet)
    for label, path in paths.items():
        print(f"{label:<15} {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="atlas", description="Canonical-atlas video editing: fit, render, export, inspect.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    quiet = _Parser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", help="no progress bars or messages")

    f = sub.add_parser("fit", parents=[quiet], help="register a video into layered atlases")
    f.add_argument("video", help="movie file (mp4/mov/gif...) or image sequence (folder, plate.%%04d.png, plate.####.exr)")
    f.add_argument("-o", "--output", required=True, help="bundle directory to write")
    f.add_argument("--config", default="default", help="preset name (fast, default, quality, lna, codef) or a YAML file")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.iters=500 (repeatable)")
    f.add_argument("--masks", help="folder of foreground masks, one per frame")
    f.add_argument("--flow", choices=["auto", "raft", "dis"], help="optical flow method (default: the config's, auto)")
    f.add_argument("--raft-weights", help="local torchvision RAFT checkpoint (.pth)")
    f.add_argument("--sam-checkpoint", help="segment-anything checkpoint for masks")
    f.add_argument("--sam-prompt", help="SAM prompt on the first frame: x,y or x0,y0,x1,y1 (pixels)")
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    f.add_argument("--frames", help="frame range A:B (half-open), e.g. 0:30")
    f.add_argument("--size", help="resize frames to WxH, e.g. 427x240")
    f.add_argument("--iters", type=int, help="optimisation steps (overrides the config)")
    f.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop fitting after this many seconds")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--resume", action="store_true", help="continue from the checkpoint next to the output")
    f.add_argument("--allow-gaps", action="store_true", help="fit an image sequence with missing frame numbers as it is")
    f.set_defaults(func=cmd_fit)

    r = sub.add_parser("render", parents=[quiet], help="reconstruct the video from a bundle")
    r.add_argument("bundle")
    r.add_argument("-o", "--output", required=True, help=".mp4 file or folder for PNGs")
    r.set_defaults(func=cmd_render)

    e = sub.add_parser("export", parents=[quiet], help="write atlas images and per-frame opacity for compositing")
    e.add_argument("bundle")
    e.add_argument("-o", "--output", required=True, help="folder to write")
    e.add_argument("--fitted-size", action="store_true",
                   help="per-frame maps at the fitted (--size) resolution, not the source's")
    e.add_argument("--matte", choices=["guided", "fitted"], default="guided",
                   help="layer weights written: guided (refined against each source frame, as atlas edit composites; default) or fitted")
    e.add_argument("--source", help="source video the guided matte reads (default: the fitted source, re-read from disk)")
    e.set_defaults(func=cmd_export)

    ed = sub.add_parser("edit", parents=[quiet], help="apply an atlas or keyframe edit to every frame")
    ed.add_argument("bundle")
    ed.add_argument("-o", "--output", required=True, help=".mp4 file or folder for PNGs; edited atlases go to OUT_atlas/")
    ed.add_argument("--atlas", action="append", metavar="LAYER=IMAGE", help="edited atlas image for a layer (repeatable)")
    ed.add_argument("--keyframe", action="append", metavar="INDEX=IMAGE", help="edited frame (repeatable)")
    ed.add_argument("--keyframe-mask", action="append", metavar="INDEX=MASK", help="what changed in that keyframe (white = edited)")
    d_ = ed.add_argument_group("prompt edits (Stable Diffusion; see README §Diffusion models)")
    d_.add_argument("--prompt", help="text prompt: what the edited layer should become")
    d_.add_argument("--method", choices=["videdit", "diffusion-atlas", "stablevideo"],
                    help="videdit: atlas region; diffusion-atlas: adapted model + DDIM inversion; stablevideo: keyframes fused into the atlas")
    d_.add_argument("--layer", help="layer the prompt edits (default: the first foreground, else the background)")
    d_.add_argument("--background-prompt", help="also edit the background with its own prompt")
    d_.add_argument("--model", help="Stable Diffusion 1.5-family model: folder, .safetensors or cached hub id (default: $ATLAS_SD_MODEL or stable-diffusion-v1-5/stable-diffusion-v1-5)")
    d_.add_argument("--controlnet", help="ControlNet folder/file/id, 'auto' (default: $ATLAS_CONTROLNET or the annotator's) or 'none'")
    d_.add_argument("--annotator", choices=["canny", "hed", "depth"], help="structure the ControlNet follows (default canny: needs no weights)")
    d_.add_argument("--annotator-weights", help="HED weights (ControlNetHED.pth) for hed; depth model folder/id for depth")
    d_.add_argument("--strength", type=float, help="how far from the source to go, 0..1 (default 0.75)")
    d_.add_argument("--steps", type=int, help="denoising steps (default 30)")
    d_.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    d_.add_argument("--seed", type=int, help="random seed (default 0): same seed, same result")
    d_.add_argument("--negative-prompt")
    d_.add_argument("--resolution", type=int, help="long side the model works at (default 512)")
    d_.add_argument("--region-mask", help="videdit/diffusion-atlas: atlas-sized mask of the region to edit (default: the layer's coverage)")
    d_.add_argument("--sam-checkpoint", help="videdit: pick the region with SAM on the atlas; "
                    "diffusion-atlas: find the edited object's new silhouette with SAM and re-fit the opacity to it")
    d_.add_argument("--sam-prompt", help="videdit: SAM prompt on the atlas, x,y or x0,y0,x1,y1 (atlas pixels)")
    d_.add_argument("--inpaint", action="store_true", default=None, help="videdit: regenerate only the region (inpainting pipeline)")
    d_.add_argument("--keyframe-stride", type=int, help="stablevideo: a keyframe every N frames (default: chosen by atlas coverage)")
    d_.add_argument("--max-keyframes", type=int, help="stablevideo: at most this many keyframes (default 8)")
    d_.add_argument("--lora-steps", type=int, help="diffusion-atlas: LoRA steps on the atlas (default 200; 0 skips)")
    d_.add_argument("--source-prompt", help="diffusion-atlas: prompt describing the source, used for inversion (default empty)")
    d_.add_argument("--shape-mask", help="diffusion-atlas: atlas-sized mask of the edited object's silhouette; its opacity is re-fitted to it")
    d_.add_argument("--refit-steps", type=int, help="diffusion-atlas: opacity re-fit steps (default 300)")
    d_.add_argument("--device", help="auto (default), cpu or cuda")
    d_.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], help="default: fp16 on a GPU, fp32 on the CPU")
    d_.add_argument("--attention-slicing", action="store_true", help="less VRAM, a little slower")
    d_.add_argument("--vae-tiling", action="store_true", help="decode large images in tiles")
    d_.add_argument("--cpu-offload", action="store_true", help="keep models on the CPU until they run (GPU only; least VRAM)")
    ed.add_argument("--mode", choices=["overlay", "replace"], default="overlay",
                    help="overlay: edit over the source frames (default); replace: re-render from edited atlases")
    ed.add_argument("--source", help="source video to edit (default: the fitted source, re-read from disk)")
    ed.add_argument("--matte", choices=["guided", "fitted"], default="guided",
                    help="how each frame's layers are cut: guided (the fitted opacity's edges moved onto the frame's colour edges; default) or fitted")
    ed.set_defaults(func=cmd_edit)

    i = sub.add_parser("info", help="describe a bundle")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=cmd_info)

    tr = sub.add_parser("track", parents=[quiet], help="track points through the atlas (CSV, JSON or a Nuke Tracker4 script)")
    tr.add_argument("bundle")
    tr.add_argument("-o", "--output", required=True, help="tracks file: .csv, .json or .nk (Nuke)")
    tr.add_argument("--point", action="append", metavar="X,Y[@T]", help="a query point in pixels, on frame T (default 0); repeatable")
    tr.add_argument("--points", metavar="FILE.csv", help="query points, one x,y[,t] row each")
    tr.add_argument("--grid", metavar="NxM[@T]", help="N x M query points spread over frame T (default 0)")
    tr.add_argument("--layer", help="follow this layer (default: the layer with the largest weight at each query)")
    tr.add_argument("--source-size", action="store_true", help="points in pixels of the source frames, not the fitted (--size) ones")
    tr.add_argument("--first-frame", type=int, default=1, help="number of the first frame in a .nk script (default 1)")
    tr.set_defaults(func=cmd_track)

    d = sub.add_parser("demo", parents=[quiet], help="make a synthetic clip, fit it, write a preview")
    d.add_argument("-o", "--output", default="atlas-demo", help="folder for the demo's files")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not os.environ.get("ATLAS_DEBUG"):  # warnings as one line each, like errors
        warnings.formatwarning = lambda message, *_, **__: f"atlas {args.command}: warning: {first_line(message)}\n"
    try:
        with recorded():
            return args.func(args)
    except AtlasInputError as exc:
        print(f"atlas {args.command}: error: {first_line(exc)}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # an unreadable input or unwritable output: the user's to fix
        print(f"atlas {args.command}: error: permission denied: {exc.filename or first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"atlas {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last resort: one line unless debugging
        if os.environ.get("ATLAS_DEBUG"):
            traceback.print_exc()
        else:
            print(f"atlas {args.command}: unexpected error: {exc.__class__.__name__}: {first_line(exc)} (set ATLAS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
