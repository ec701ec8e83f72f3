"""Weight edits of a data set, applied together once, saved with a record of what they are, reused.

A saved edit set is one ``torch.save`` file: ``{"manifest": {...}, "weights": {parameter name: tensor}}``
holding only the parameters the edit changed (one MLP projection for ROME and LoRA-FT). The
manifest names the method, its settings, the layer, the model (name and a fingerprint of its
config and weights), the edits (count, digest and the requests themselves), how long it took and
each edit's report. Loading checks method, settings, layer, model and edits against the run's and
refuses a file made for anything else, naming what differs.

``edited_model`` is the entry point: it loads the edit set when one matching the run exists (by
default under ``cache_dir``, named by the digests, so a new data set or setting makes a new file)
and otherwise computes it, saves it (atomically: a crash never leaves a half-written file under
the final name) and applies it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from gflownet.core.checkpointing import atomic_torch_save
from gflownet.editing.model_parts import default_layer, fingerprint, mlp_site
from gflownet.editing.requests import EditRequest, requests_digest

log = logging.getLogger(__name__)

FORMAT = 1
WEIGHT_METHODS = ("rome", "lora_ft")


class EditSetMismatchError(ValueError):
    """A saved edit set was made for other edits, another model, method, layer or settings."""


def settings_digest(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def expected_manifest(method: str, settings: dict, layer: int, model, model_name: str,
                      requests: Sequence[EditRequest]) -> dict[str, Any]:
    return {"format": FORMAT, "method": method, "settings": settings, "layer": layer, "model_name": model_name,
            "model_fingerprint": fingerprint(model), "edits": len(requests), "edits_digest": requests_digest(requests)}


def default_path(cache_dir: str | Path, manifest: dict) -> Path:
    name = (f"{manifest['method']}-{manifest['model_fingerprint']}-L{manifest['layer']}-{manifest['edits']}edits-"
            f"{manifest['edits_digest']}-{settings_digest(manifest['settings'])}.pt")
    return Path(cache_dir) / name


def check_manifest(saved: dict, expected: dict, path: Path) -> None:
    labels = {"format": "file format", "method": "edit method", "settings": "settings", "layer": "layer",
              "model_fingerprint": "model (fingerprint of config and weights)", "edits_digest": "edits (digest)",
              "edits": "number of edits"}
    diffs = [f"{labels[k]}: saved {saved.get(k)!r}, this run {expected[k]!r}" for k in labels if saved.get(k) != expected[k]]
    if diffs:
        raise EditSetMismatchError(
            f"saved edit set {path} does not match this run ({'; '.join(diffs)}; saved for model "
            f"{saved.get('model_name')!r}, this run's is {expected['model_name']!r}). Point answerer.edit.path at "
            "another file (or leave it null) to compute the edits for this run, or delete the file.")


def save_edit_set(path: Path, manifest: dict, weights: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"manifest": manifest, "weights": {k: v.detach().cpu() for k, v in weights.items()}}, path)


def load_edit_set(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob["manifest"], blob["weights"]
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise EditSetMismatchError(f"cannot read the saved edit set {path} ({type(err).__name__}: {err}): delete it "
                                   "to compute the edits again") from None


def full_settings(method: str, settings: dict, stats: dict, model) -> dict:
    """The method's settings with its defaults filled in (what the manifest records); unknown keys are refused."""
    from dataclasses import fields

    from gflownet.editing.lora_ft import LoraFTSettings
    from gflownet.editing.rome import RomeSettings

    cls = RomeSettings if method == "rome" else LoraFTSettings
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown {method} setting(s) {unknown} in answerer.edit.settings: known are {sorted(known)}")
    values = dict(settings)
    if "templates" in values:
        values["templates"] = tuple(tuple(int(x) for x in t) for t in values["templates"])
    full = (RomeSettings.for_model(model, **values) if method == "rome" else LoraFTSettings(**values)).to_dict()
    if method == "rome":
        full["stats"] = {"text": str(stats["text"]), "n_tokens": int(stats["n_tokens"])}
    return full


@torch.no_grad()
def apply_weights(model, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, w in weights.items():
        if name not in params or params[name].shape != w.shape:
            raise EditSetMismatchError(f"edit set weight {name} {tuple(w.shape)} has no counterpart in the model")
        params[name].copy_(w.to(params[name].dtype))


def edited_model(method: str, model, tokenizer, requests: Sequence[EditRequest], *, model_name: str = "",
                 layer: int | None = None, settings: dict | None = None, stats: dict | None = None,
                 path: str | Path | None = None, cache_dir: str | Path | None = None) -> tuple[Any, dict]:
    """Apply the edits ``requests`` to ``model`` in place with ``method`` (``rome`` or ``lora_ft``),
    from a saved edit set when one matches, else computed and saved. Returns (model, manifest)."""
    if method not in WEIGHT_METHODS:
        raise ValueError(f"edited_model edits weights: method must be one of {WEIGHT_METHODS}, got {method!r}")
    if not requests:
        raise ValueError("no edits to apply: the edit data set is empty")
    layer = default_layer(model, model_name) if layer is None else int(layer)
    site = mlp_site(model, layer)
    stats = {"text": "sampled", "n_tokens": 50_000, **dict(stats or {})}
    settings = full_settings(method, settings or {}, stats, model)
    expected = expected_manifest(method, settings, layer, model, model_name, requests)
    if path is None:
        if cache_dir is None:
            raise ValueError("edited_model needs a path or a cache_dir for the edit set")
        path = default_path(cache_dir, expected)
    path = Path(path)
    if path.is_file():
        saved, weights = load_edit_set(path)
        check_manifest(saved, expected, path)
        apply_weights(model, weights)
        log.info("loaded %s edit set %s (%d edits)", method, path, saved["edits"])
        return model, saved
    started = time.perf_counter()
    if method == "rome":
        from gflownet.editing.rome import RomeSettings, apply_rome
        from gflownet.editing.stats import cached_second_moment

        C = cached_second_moment(model, tokenizer, site, layer, cache_dir or path.parent, text=str(stats["text"]),
                                 n_tokens=int(stats["n_tokens"]))
        rome = {k: v for k, v in settings.items() if k != "stats"}
        rome["templates"] = tuple(tuple(t) for t in rome["templates"])
        reports: Any = apply_rome(model, tokenizer, site, requests, C, RomeSettings(**rome))
    else:
        from gflownet.editing.lora_ft import LoraFTSettings, apply_lora_ft

        reports = apply_lora_ft(model, tokenizer, site, requests, LoraFTSettings(**settings))
    manifest = dict(expected, site=site.name, requests=[r.to_dict() for r in requests], reports=reports,
                    seconds=round(time.perf_counter() - started, 1), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    save_edit_set(path, manifest, {f"{site.name}.weight": site.weight})
    log.info("%s: %d edits applied to %s in %.0f s, saved to %s", method, len(requests), site.name, manifest["seconds"], path)
    return model, manifest
