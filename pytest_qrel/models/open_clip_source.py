"""The ``open_clip`` model source: CLIP zero-shot classifiers whose *visual* tower is what gets quantized.

``source:`` forms::

    open_clip:<arch>/<tag>   a pretrained open_clip model, e.g. ViT-B-32/openai, ViT-B-32/laion400m_e32,
                             ViT-B-16/openai, ViT-L-14/openai, ViT-L-14/laion2b_s32b_b82k
    open_clip:<arch>         an open_clip architecture with weights from option ``checkpoint``, or random
                             weights with ``pretrained: false`` (a dry run); ``model_config: <arch>.json``
                             adds an architecture open_clip does not ship
    open_clip:digits_clip    the tiny CLIP shipped in pytest_qrel/zoo (digits 0-7, 16x16 grey; offline)

**Never downloads.** Weights come from option ``checkpoint: <file>``, else from the local caches that
open_clip itself fills when it downloads ``<arch>/<tag>`` (the Hugging Face hub cache, then
``~/.cache/clip``; option ``weights_cache_dir`` if open_clip was given a ``cache_dir``). When none
holds them, loading fails with a :class:`~pytest_qrel.errors.ModelError` that names the arch/tag,
every path looked at, and the command that fetches them on a machine with internet. The model is
built with ``open_clip.create_model_and_transforms(arch, pretrained=<that local file>)``, with the
tag's QuickGELU flag and preprocessing (mean, std, interpolation, resize mode), which open_clip only
applies by itself when it is given the tag rather than a file.

The returned :class:`~pytest_qrel.models.LoadedModel` has ``module`` =
:class:`~pytest_qrel.models.clip_zoo.ZeroShotCLIP`: the visual tower only (its attention and output
projections turned into ``nn.Linear`` layers, see :mod:`pytest_qrel.models.clip_zoo`) plus fixed
buffers, ``forward(x) = logit_scale * normalize(image_features) @ normalize(class_text).T`` with
the model's own ``logit_scale = exp(model.logit_scale)``, and ``image_features(x)`` /
``forward_with_features(x)`` for the CLIP OOD scores. The text tower runs once at load (FP32) and is
dropped. ``preprocess`` is open_clip's own eval transform for the model (it also accepts float
tensors (C, H, W) in [0, 1]; a grey channel is repeated to RGB). ``info["clip"]`` holds what the
scores of :mod:`pytest_qrel.clip_scores` read::

    logit_scale               float, the model's own
    class_text_features       Tensor (C, D), unit rows (the zero-shot head)
    negative_text_features    Tensor (M, D), unit rows: NegLabel's negative labels
    negative_labels           list[str] (M), farthest from the ID classes first
    generic_text_features     Tensor (G, D), unit rows: genneg's generic prompts
    generic_prompts           list[str] (G)
    neg_scale                 float, the softmax scale of neglabel / genneg (= logit_scale; 100 for OpenAI/LAION CLIP)
    neglabel_groups           int, NegLabel's number of groups
    mcm_tau                   float, MCM's temperature (1.0)

Options (all optional):

=====================  ===========================================================================
``checkpoint``         weights file (``.safetensors``, ``.bin``, ``.pt``) of ``<arch>``; relative paths
                       resolve against the suite's folder
``weights_cache_dir``  the ``cache_dir`` open_clip downloaded into (default: HF hub cache, ~/.cache/clip)
``class_names``        list, text file (one per line) or a built-in list (``imagenet1k_names``);
                       ImageNet WordNet ids (``n01440764``) are replaced by readable names. Default:
                       ImageNet-1k names (open_clip's), or the shipped model's own
``templates``          list of prompt templates with one ``{}``, or ``openai`` (80, default for
                       pretrained models) / ``simple`` (2)
``neg_labels``         NegLabel candidate words: list or text file. Default: the first lemma of each
                       of the 21,844 ImageNet-21k synsets of timm (``imagenet_synset_to_lemma.txt``)
``n_neg``              how many candidates NegLabel keeps (default 10000; shipped model: its json)
``neg_template``       prompt of the candidates (default ``"a photo of a {}."``)
``neg_percentile``     NegLabel's selection quantile (default 0.95)
``neglabel_groups``    NegLabel's number of groups (default 100)
``generic_prompts``    genneg's prompts (default :data:`~pytest_qrel.models.clip_zoo.GENERIC_PROMPTS`)
``cache_dir``          disk cache of text embeddings; ``false`` disables it. Default for pretrained
                       models: ``$XDG_CACHE_HOME/pytest-qrel/clip-text`` (``~/.cache/...``); for the
                       shipped model: none (its text encoder takes milliseconds)
``pretrained``         ``false``: random weights (``seed``, default 0) for ``open_clip:<arch>``: a dry run of
                       the pipeline, at chance level; no tag and no ``checkpoint`` with it
``model_config``       an open_clip architecture file (``{"embed_dim", "vision_cfg", "text_cfg"}``) named
                       ``<arch>.json``, for an ``<arch>`` open_clip does not ship (a tiny one for a dry run,
                       or your own); its SHA-256 is part of the model's digest
``linear_attention``   convert attention / output projections to ``nn.Linear`` (default true)
``quick_gelu``         force QuickGELU on or off (default: the tag's setting; false without a tag)
``text_device``        torch device the text tower runs on once at load (default ``cpu``; e.g. ``cuda``).
                       A ViT-B text tower on a CPU encodes some tens of prompts per second (~10 GFLOP
                       each at full context; prompts are trimmed to their used tokens), so the first
                       load of an ImageNet head (1000 classes x 80 templates, plus 21,844 candidate
                       negatives) takes tens of minutes there and seconds on a GPU; the disk cache makes
                       every later load fast. ``templates: simple`` (2 per class) cuts the class head's cost 40x
=====================  ===========================================================================

Text embeddings are cached in-process and (``cache_dir``) on disk as one safetensors file per set
of prompts, named by the SHA-256 of ``{text-tower weights SHA-256, tokenizer, prompts}``: the class
head (class names x templates), the NegLabel candidate vocabulary (mining is redone at each load,
it is cheap) and the generic prompts. A changed checkpoint or prompt list never hits a stale entry.

**Fingerprint.** The checkpoint file's SHA-256 (of its bytes; for the shipped model the one its
config pins and the load checks) is recorded in ``info["checkpoint_sha256"]`` and so in the model's
identity (baselines, outputs-cache keys, the run info), beside ``weights_sha256``, the digest of the
loaded state dict (both towers) with the class names, templates and tokenizer: as the ``timm:``
source records a checkpoint. A file changed at the same path is a new model even when the weights it
loads are the same.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError, QrelError, UnknownNameError
from ..options import Option, anything, boolean, integer, is_number, parse_options, positive_int, prefixed
from ..zoo import ZOO_DIR
from .base import MODEL_SOURCES, LoadedModel, state_dict_sha256
from .embedded import EMBEDDED_CLIPS, GreyNormalize

TEXT_CACHE_FORMAT = 1
DEFAULT_NEG_TEMPLATE = "a photo of a {}."
DEFAULT_N_NEG = 10000
DEFAULT_NEG_PERCENTILE = 0.95
DEFAULT_NEGLABEL_GROUPS = 100
MCM_TAU = 1.0


def template_problem(template: Any) -> str | None:
    """Why ``template`` is not a prompt template with exactly one ``{}`` (the class name), or None.

    Read as Python's ``str.format`` reads it: a second placeholder (``{pet}``), a stray brace or a
    conversion would fail or misplace the class name when the prompts are built. Literal braces are
    written ``{{`` and ``}}``."""
    if not isinstance(template, str):
        return f"a template must be a string, got {template!r}"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        return f"template {template!r} is not a valid format string ({err}; write a literal brace as '{{{{' or '}}}}')"
    if len(fields) != 1:
        return f"template {template!r} must contain '{{}}' exactly once (where the class name goes), it has {len(fields)} placeholders"
    name, spec, conv = fields[0]
    if name or spec or conv:
        placeholder = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        return f"template {template!r} has the placeholder {placeholder!r}; write '{{}}' alone, where the class name goes"
    return None


def _one_placeholder(value: Any) -> bool:
    return template_problem(value) is None


def _fraction_above_zero(value: Any) -> bool:
    return is_number(value) and 0 < value <= 1


OPTIONS: dict[str, Option] = {
    # read when the model is loaded (paths, lists or files, a device): the defaults depend on the model
    **{key: anything() for key in ("cache_dir", "checkpoint", "class_names", "generic_prompts", "neg_labels",
                                   "templates", "text_device", "weights_cache_dir")},
    "linear_attention": boolean(True),
    "model_config": anything(),
    "pretrained": boolean(None),
    "seed": integer(0, lo=0),
    "n_neg": Option(None, positive_int, "a positive integer"),
    "neg_percentile": Option(DEFAULT_NEG_PERCENTILE, _fraction_above_zero, "a number in (0, 1]", float),
    "neg_template": Option(None, _one_placeholder, "a string with one '{}'"),
    "neglabel_groups": Option(None, positive_int, "a positive integer"),
    "quick_gelu": boolean(None),
}  # fmt: skip
"""The options of an ``open_clip:`` model (module docstring); the scalars are checked when the suite
loads, the rest when the model is."""

_TEXT_CACHE: dict[str, Any] = {}


def clear_cache() -> None:
    """Forget the in-process text embeddings and shipped weights (the disk cache stays)."""
    _TEXT_CACHE.clear()
    _read_embedded_state.cache_clear()
    _file_sha256.cache_clear()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-qrel/clip-text`` (``~/.cache/pytest-qrel/clip-text``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "pytest-qrel" / "clip-text"


# --------------------------------------------------------------------------------------------------
# Option parsing
# --------------------------------------------------------------------------------------------------


def _where(source: str) -> str:
    return f"model 'open_clip:{source}'"


def _path(raw: Any, base_dir: Path, what: str, source: str) -> Path:
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if not isinstance(raw, str) or not raw.strip():
        raise ModelError(f"{_where(source)}: option '{what}' must be a path, got {raw!r}")
    path = Path(os.path.expanduser(os.path.expandvars(raw)))
    return path if path.is_absolute() else Path(base_dir) / path


def _check_options(options: Mapping[str, Any], source: str) -> None:
    """Unknown keys, bad scalar values (:data:`OPTIONS`) and prompt templates given as a list: a
    ModelError naming the model (so a typo in a template is an error when the suite loads)."""
    parse_options(options, OPTIONS, fail=prefixed(ModelError, _where(source)))
    if "templates" in options and options["templates"] not in ("openai", "simple"):
        _templates(options["templates"], source)


def _read_lines(path: Path, what: str, source: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ModelError(f"{_where(source)}: cannot read {what} file {path}: {err.strerror or err}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ModelError(f"{_where(source)}: {what} file {path} is empty")
    return lines


def _string_list(value: Any, what: str, source: str, base_dir: Path, *, allow_file: bool = True) -> list[str]:
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise ModelError(f"{_where(source)}: option '{what}' must be a non-empty list of strings")
        return [str(v) for v in value]
    if allow_file and isinstance(value, (str, os.PathLike)):
        return _read_lines(_path(value, base_dir, what, source), what, source)
    raise ModelError(f"{_where(source)}: option '{what}' must be a list{' or a file' if allow_file else ''}, got {value!r}")


_WNID = re.compile(r"^n\d{8}$")


def _readable(names: list[str]) -> list[str]:
    """Replace each ImageNet WordNet id among ``names`` by a readable name (open_clip's ImageNet-1k
    names, else timm's first lemma); other names, and ids of neither list, stay as they are."""
    if not any(_WNID.fullmatch(n) for n in names):
        return names
    from ..data.classnames import imagenet_classnames, imagenet_synsets

    index = {s: i for i, s in enumerate(imagenet_synsets())}
    readable = imagenet_classnames()
    lemmas = _synset_lemmas()
    return [(readable[index[n]] if n in index else lemmas.get(n, n)) if _WNID.fullmatch(n) else n for n in names]


def _class_names(value: Any, source: str, base_dir: Path) -> list[str]:
    if isinstance(value, str):
        from ..data.classnames import CLASS_LISTS

        if value in CLASS_LISTS:
            return _readable(list(CLASS_LISTS.get(value)()))
    # Names may repeat: they are display names of distinct classes (OpenCLIP's own ImageNet list has
    # 'missile' and 'sunglasses' twice), and repeated names just get identical text embeddings.
    return _readable(_string_list(value, "class_names", source, base_dir))


def _templates(value: Any, source: str) -> list[str]:
    if isinstance(value, str) and value in ("openai", "simple"):
        from ..data.classnames import imagenet_templates

        return imagenet_templates(simple=value == "simple")
    if isinstance(value, str):
        raise ModelError(f"{_where(source)}: option 'templates' must be 'openai', 'simple' or a list of prompts, got {value!r} "
                         f"(fix: a list, even of one prompt: templates: [{json.dumps(value)}])")
    templates = _string_list(value, "templates", source, Path.cwd(), allow_file=False)
    for template in templates:
        problem = template_problem(template)
        if problem:
            raise ModelError(f"{_where(source)}: option 'templates': {problem}")
    return templates


def prompt_name(name: str) -> str:
    """The words a class name stands for in a prompt: ``_`` becomes a space (``golden_retriever`` ->
    ``golden retriever``; folder names cannot easily hold spaces, and CLIP was trained on captions,
    as open_clip's own class lists are written)."""
    return " ".join(name.replace("_", " ").split()) or name


@functools.lru_cache(maxsize=1)
def _synset_lemmas() -> dict[str, str]:
    """``{wnid: first lemma}`` of timm's ``imagenet_synset_to_lemma.txt`` (21,844 synsets)."""
    import timm.data

    path = Path(timm.data.__file__).parent / "_info" / "imagenet_synset_to_lemma.txt"
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, lemmas = line.partition("\t")
        if lemmas.strip():
            out[wnid.strip()] = lemmas.split(",")[0].strip()
    return out


def default_negative_vocabulary() -> list[str]:
    """NegLabel's default candidate words: the first lemma of each ImageNet-21k synset (timm), deduplicated."""
    return list(dict.fromkeys(_synset_lemmas().values()))


# --------------------------------------------------------------------------------------------------
# Text embeddings, cached
# --------------------------------------------------------------------------------------------------


def _text_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps({"format": TEXT_CACHE_FORMAT, **parts}, sort_keys=True).encode()).hexdigest()


def _caption_encoder(clip_model: Any, tokenizer: Any, tokenizer_id: str, checkpoint_sha: str, cache_dir: Path | None,
                     device: Any) -> Callable[[list[str]], Any]:
    """``encode(captions) -> (N, D)`` float32 text features of ``captions`` (memoised like the prompts)."""
    from .clip_zoo import encode_texts

    def encode(captions: list[str]) -> Any:
        texts = [str(c) for c in captions]
        key = _text_key(kind="captions", texts=texts, checkpoint_sha256=checkpoint_sha, tokenizer=tokenizer_id)
        return cached_text_features(key, lambda: encode_texts(clip_model, tokenizer, texts, device=device), cache_dir)

    return encode


def cached_text_features(key: str, compute: Callable[[], Any], cache_dir: Path | None) -> Any:
    """``compute()`` (a float32 tensor) memoised under ``key`` in-process and in ``cache_dir/<key>.safetensors``.

    Unreadable cache files are recomputed and rewritten (atomically); the returned tensor is a copy.
    """
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key].clone()
    tensor = None
    path = cache_dir / f"{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        from safetensors.torch import load_file

        try:
            tensor = load_file(str(path))["features"]
        except Exception:  # a truncated or foreign file: recompute it
            tensor = None
    if tensor is None:
        tensor = compute().detach().float().contiguous()
        if path is not None:
            _write_features(path, tensor)
    _TEXT_CACHE[key] = tensor
    return tensor.clone()


def _write_features(path: Path, tensor: Any) -> None:
    from safetensors.torch import save

    from ..io import atomic_write_bytes

    try:
        atomic_write_bytes(path, save({"features": tensor.contiguous()}, metadata={"format": str(TEXT_CACHE_FORMAT)}))
    except OSError:  # a read-only cache is not an error: the features are in memory
        pass


@dataclass
class _TextSide:
    """What the text tower contributes, computed once per load."""

    class_features: Any
    negative_features: Any
    negative_labels: list[str]
    generic_features: Any
    generic_prompts: list[str]


def _text_side(
    clip_model: Any,
    tokenizer: Callable[[list[str]], Any],
    tokenizer_id: str,
    *,
    class_names: list[str],
    templates: list[str],
    candidates: list[str],
    n_neg: int,
    neg_template: str,
    neg_percentile: float,
    generic_prompts: list[str],
    cache_dir: Path | None,
    device: Any = None,
) -> _TextSide:
    from .clip_zoo import encode_texts, mine_negative_labels, text_tower_sha256, zero_shot_weights

    tower = text_tower_sha256(clip_model)
    common = {"text_tower_sha256": tower, "tokenizer": tokenizer_id}
    names = [prompt_name(c) for c in class_names]
    class_features = cached_text_features(
        _text_key(kind="classes", classes=names, templates=templates, **common),
        lambda: zero_shot_weights(clip_model, tokenizer, names, templates, device=device),
        cache_dir,
    )
    lowered = {c.strip().lower() for c in [*class_names, *names]}
    words = [w for w in dict.fromkeys(w.strip() for w in candidates) if w and w.lower() not in lowered]
    if not words:
        raise ModelError("no negative-label candidates are left after removing the ID class names")
    prompts = [neg_template.format(w) for w in words]
    vocab_features = cached_text_features(
        _text_key(kind="vocabulary", texts=prompts, **common),
        lambda: encode_texts(clip_model, tokenizer, prompts, device=device),
        cache_dir,
    )
    keep = mine_negative_labels(class_features, vocab_features, n_neg, percentile=neg_percentile)
    generic_features = cached_text_features(
        _text_key(kind="generic", texts=generic_prompts, **common),
        lambda: encode_texts(clip_model, tokenizer, generic_prompts, device=device),
        cache_dir,
    )
    return _TextSide(
        class_features=class_features,
        negative_features=vocab_features[keep].clone(),
        negative_labels=[words[int(i)] for i in keep],
        generic_features=generic_features,
        generic_prompts=list(generic_prompts),
    )


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


class OpenClipTransform:
    """open_clip's eval transform for a model (``image_transform_v2(PreprocessCfg(**cfg), is_train=False)``).

    Accepts a PIL image (open_clip's path: RGB conversion, resize, center crop, to tensor,
    normalise) or a float tensor (C, H, W) / (B, C, H, W) in [0, 1] (a single grey channel is
    repeated to RGB, then the same resize, crop and normalisation). Picklable, with a stable repr.
    """

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in sorted(dict(cfg).items())}
        self._transform: Any = None

    def _get(self) -> Any:
        if self._transform is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            self._transform = image_transform_v2(PreprocessCfg(**self.cfg), is_train=False)
        return self._transform

    def __call__(self, image: Any) -> Any:
        import torch

        if isinstance(image, torch.Tensor):
            if not image.is_floating_point():
                raise ValueError(f"{self!r} expects a float tensor with values in [0, 1]; got dtype {image.dtype}")
            if image.ndim < 3 or image.shape[-3] not in (1, 3):
                raise ValueError(f"{self!r} expects a tensor (C, H, W) with C = 1 or 3; got {tuple(image.shape)}")
            if image.shape[-3] == 1:
                image = image.repeat_interleave(3, dim=-3)
        return self._get()(image)

    def stages(self) -> Any:
        """``(to_unit, normalize)`` split before open_clip's ``Normalize`` (grey tensors repeated to RGB first)."""
        from .base import compose_stages

        split = compose_stages(list(self._get().transforms))
        if split is None:
            return None
        head, tail = split

        def to_unit(image: Any) -> Any:
            import torch

            if isinstance(image, torch.Tensor) and image.ndim >= 3 and image.shape[-3] == 1:
                image = image.repeat_interleave(3, dim=-3)
            return head(image)

        return to_unit, tail

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "_transform": None}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpenClipTransform) and other.cfg == self.cfg

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        return f"OpenClipTransform({', '.join(f'{k}={v!r}' for k, v in self.cfg.items())})"

    def describe(self) -> str:
        c = self.cfg
        return (
            f"open_clip eval transform: resize ({c.get('resize_mode')}, {c.get('interpolation')}) and center crop "
            f"to {c.get('size')}, RGB (grey repeated), normalize mean={tuple(c.get('mean', ()))} std={tuple(c.get('std', ()))}"
        )


@dataclass(frozen=True)
class GreyToRGBNormalize:
    """Preprocessing of the shipped digit CLIP: grey (1, size, size) in [0, 1] -> ``(x - mean) / std``
    repeated to 3 channels (a PIL image is converted to grey and resized first, as for ``digits_vit``)."""

    mean: float
    std: float
    size: int = 16

    def __call__(self, image: Any) -> Any:
        return GreyNormalize(self.mean, self.std, self.size)(image).repeat_interleave(3, dim=-3)

    def stages(self) -> Any:
        """``(to_unit, normalize)``: grey (1, size, size) in [0, 1], then normalised and repeated to RGB."""
        to_unit, normalize = GreyNormalize(self.mean, self.std, self.size).stages()
        return to_unit, lambda x: normalize(x).repeat_interleave(3, dim=-3)

    def describe(self) -> str:
        return f"grey 1x{self.size}x{self.size} in [0,1]; (x - {self.mean!r}) / {self.std!r}; repeated to 3 channels"


# --------------------------------------------------------------------------------------------------
# Finding pretrained weights offline
# --------------------------------------------------------------------------------------------------


def fetch_command(arch: str, tag: str, weights_cache_dir: Path | None = None) -> str:
    cache = f", cache_dir={str(weights_cache_dir)!r}" if weights_cache_dir else ""
    return f"python -c \"import open_clip; open_clip.create_model_and_transforms({arch!r}, pretrained={tag!r}{cache})\""


def find_local_weights(
    arch: str, tag: str, cfg: Mapping[str, Any], weights_cache_dir: Path | None
) -> tuple[Path | None, list[str]]:
    """The local file open_clip would have downloaded for ``arch/tag``, and every place looked at.

    Checks (in open_clip's order of preference) the Hugging Face hub cache for the tag's ``hf_hub``
    repository (safetensors first), then open_clip's URL download folder. Touches no network.
    """
    looked: list[str] = []
    if cfg.get("file"):
        p = Path(cfg["file"])
        looked.append(str(p))
        if p.is_file():
            return p, looked
    hf_hub = str(cfg.get("hf_hub") or "")
    if hf_hub:
        try:
            from huggingface_hub import constants, try_to_load_from_cache

            from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
        except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
            pass
        else:
            # open_clip's convention: "org/repo/" means the default file names, "org/repo/file" one file
            repo, filename = (hf_hub.rstrip("/"), "") if hf_hub.endswith("/") else os.path.split(hf_hub)
            if not filename:
                names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
            elif filename.endswith((".bin", ".pth")):
                names = [filename[:-4] + ".safetensors", filename]
            else:
                names = [filename]
            hub_dir = Path(weights_cache_dir) if weights_cache_dir else Path(constants.HF_HUB_CACHE)
            for name in names:
                found = try_to_load_from_cache(repo, name, cache_dir=str(hub_dir))
                looked.append(str(hub_dir / f"models--{repo.replace('/', '--')}" / "snapshots" / "*" / name))
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found), looked
    url = str(cfg.get("url") or "")
    if url:
        folder = Path(weights_cache_dir) if weights_cache_dir else Path(os.path.expanduser("~/.cache/clip"))
        p = folder / os.path.basename(url)
        looked.append(str(p))
        if p.is_file():
            return p, looked
    return None, looked


def _build_pretrained(arg: str, options: Mapping[str, Any], base_dir: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(clip_model, tokenizer, preprocess, info)`` for ``<arch>[/<tag>]``."""
    try:
        import open_clip
    except ImportError:
        raise ModelError(f"{_where(arg)} needs open_clip: `pip install open_clip_torch` (or pytest-qrel[clip])") from None

    arch, _, tag = arg.partition("/")
    config_sha = _add_model_config(arch, tag, options, base_dir, arg) if options.get("model_config") else None
    known = open_clip.list_models()
    if arch not in known:
        unknown = UnknownNameError("open_clip architecture", arch, known, listing="see open_clip.list_models()")
        raise ModelError(f"{_where(arg)}: {unknown} (an architecture of your own: option 'model_config: {arch}.json')")
    if options.get("pretrained") is False:
        return _build_random(open_clip, arg, arch, tag, options, config_sha)
    cfg: dict[str, Any] = {}
    if tag:
        cfg = dict(open_clip.get_pretrained_cfg(arch, tag) or {})
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ModelError(f"{_where(arg)}: {UnknownNameError('pretrained tag', tag, tags)}")
    weights_cache_dir = None
    if options.get("weights_cache_dir"):
        weights_cache_dir = _path(options["weights_cache_dir"], base_dir, "weights_cache_dir", arg)
    if options.get("checkpoint"):
        checkpoint = _path(options["checkpoint"], base_dir, "checkpoint", arg)
        if not checkpoint.is_file():
            raise ModelError(f"{_where(arg)}: option 'checkpoint': {checkpoint.resolve()} "
                             f"{'is a folder, not a weights file' if checkpoint.is_dir() else 'does not exist'} (a relative path is read "
                             "from the suite file's folder; fix: the path of your .safetensors / .pt / .bin file)")
    elif tag:
        found, looked = find_local_weights(arch, tag, cfg, weights_cache_dir)
        if found is None:
            raise ModelError(
                f"{_where(arg)}: no local weights for {arch}/{tag} (pytest-qrel never downloads); looked at "
                + "; ".join(looked)
                + f". Fetch them on a machine with internet with `{fetch_command(arch, tag, weights_cache_dir)}` and "
                "copy the cache over, or give the file as option 'checkpoint'"
            )
        checkpoint = found
    else:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise ModelError(f"{_where(arg)}: give a pretrained tag ('open_clip:{arch}/<tag>', known: {tags}) or option 'checkpoint'")

    quick_gelu = options.get("quick_gelu", cfg.get("quick_gelu", False))  # checked by _check_options
    kwargs: dict[str, Any] = {"force_quick_gelu": quick_gelu}
    for ours, theirs in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                         ("resize_mode", "image_resize_mode")):  # fmt: skip
        if cfg.get(ours) is not None:
            kwargs[theirs] = cfg[ours]
    model, tokenizer, preprocess = _create(open_clip, arg, arch, f"from {checkpoint}", pretrained=str(checkpoint), **kwargs)
    info = {"arch": arch, "pretrained": tag or None, "checkpoint": str(checkpoint), "quick_gelu": quick_gelu,
            "checkpoint_sha256": checkpoint_file_sha256(checkpoint)}
    if config_sha:
        info["model_config_sha256"] = config_sha
    return model, tokenizer, preprocess, info


def _create(open_clip: Any, arg: str, arch: str, how: str, **kwargs: Any) -> tuple[Any, Any, Any]:
    """``(model in eval mode, tokenizer, preprocess)`` from ``open_clip.create_model_and_transforms(arch,
    **kwargs)``; its failures are one ModelError ("cannot build <arch> <how>: ..."). The preprocessing
    is :class:`OpenClipTransform` of the model's config, checked to be open_clip's own eval transform."""
    try:
        model, _, preprocess_val = open_clip.create_model_and_transforms(arch, **kwargs)
        tokenizer = open_clip.get_tokenizer(arch)
    except QrelError:
        raise
    except Exception as err:
        raise ModelError(f"{_where(arg)}: cannot build {arch} {how}: {err}") from None
    model.eval()
    preprocess = OpenClipTransform(dict(getattr(model.visual, "preprocess_cfg", {}) or {}))
    if repr(preprocess._get()) != repr(preprocess_val):  # pragma: no cover - guards an open_clip API change
        raise ModelError(f"{_where(arg)}: cannot reproduce open_clip's eval transform ({preprocess_val!r})")
    return model, tokenizer, preprocess


def _add_model_config(arch: str, tag: str, options: Mapping[str, Any], base_dir: Path, arg: str) -> str:
    """Register option ``model_config`` (``<arch>.json``) with open_clip; its SHA-256."""
    path = _path(options["model_config"], base_dir, "model_config", arg)
    where = f"{_where(arg)}: option 'model_config'"
    if not path.is_file():
        raise ModelError(f"{where}: {path.resolve()} does not exist (a relative path is read from the suite file's folder)")
    if path.suffix != ".json" or path.stem != arch:
        raise ModelError(f"{where}: open_clip names an architecture by its file: write the model as 'open_clip:{path.stem}' "
                         f"(fix: or name the file {arch}.json)")
    if tag:
        raise ModelError(f"{where}: an architecture of your own has no pretrained tag (fix: 'open_clip:{arch}' with option "
                         "'checkpoint', or 'pretrained: false')")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{where}: {path} is not a JSON file: {err}") from None
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise ModelError(f"{where}: {path} lacks {', '.join(missing)} (fix: an open_clip model config, such as "
                         "open_clip/model_configs/ViT-B-32.json)")
    import open_clip

    open_clip.add_model_config(path)
    from ..fingerprint import file_sha256

    return file_sha256(path)


def _build_random(open_clip: Any, arg: str, arch: str, tag: str, options: Mapping[str, Any],
                  config_sha: str | None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``pretrained: false``: ``<arch>`` with random weights drawn from option ``seed`` (torch's global
    RNG is left as it was); nothing is loaded or downloaded (no base tower weights either)."""
    if tag or options.get("checkpoint"):
        given = f"the pretrained tag '{tag}'" if tag else "option 'checkpoint'"
        raise ModelError(f"{_where(arg)}: option 'pretrained: false' (random weights) and {given} contradict each other "
                         "(fix: drop one)")
    import torch

    seed = int(options.get("seed", 0))
    kwargs: dict[str, Any] = {"force_quick_gelu": bool(options.get("quick_gelu") or False)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer, preprocess = _create(open_clip, arg, arch, "with random weights", pretrained=None,
                                               pretrained_image=False, pretrained_text=False, **kwargs)
    info: dict[str, Any] = {"arch": arch, "pretrained": None, "checkpoint": None, "quick_gelu": kwargs["force_quick_gelu"],
                            "weights_from": f"random init (seed {seed})"}
    if config_sha:
        info["model_config_sha256"] = config_sha
    return model, tokenizer, preprocess, info


def checkpoint_file_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint file's bytes (as the ``timm:`` source records it), computed once per
    file version in a process (a suite's scenarios load one checkpoint several times)."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    from ..fingerprint import file_sha256

    return file_sha256(path)


# --------------------------------------------------------------------------------------------------
# The shipped tiny CLIP
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _read_embedded_state(path: str, size: int, mtime_ns: int, expected_sha256: str, fix: str) -> dict[str, Any]:
    from safetensors.torch import load

    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise ModelError(f"shipped CLIP weights {path} are corrupt or do not match their config "
                         f"(sha256 {digest[:12]}..., expected {expected_sha256[:12]}...; {fix})")  # fmt: skip
    try:
        return load(data)
    except Exception as err:
        raise ModelError(f"shipped CLIP weights {path} cannot be read: {err} ({fix})") from None


def embedded_paths(name: str) -> tuple[Path, Path]:
    """``(weights, config)`` of the shipped CLIP ``name`` (in the zoo at call time)."""
    return ZOO_DIR / f"{name}.safetensors", ZOO_DIR / f"{name}.json"


def _embedded_config(name: str) -> tuple[dict[str, Any], Any, str]:
    """``(config, tokenizer, fix)`` of a shipped CLIP: its JSON config and its tokenizer (no weights read)."""
    from .clip_zoo import RemappedTokenizer

    fix = f"re-run `{EMBEDDED_CLIPS[name]}` to re-create it, or reinstall pytest-qrel"
    _, config_path = embedded_paths(name)
    try:
        config = json.loads(config_path.read_text())
        tok_cfg = config["tokenizer"]
        config["architecture"], config["preprocess"]  # noqa: B018 - present, or the config is unreadable
        kept_ids, context_length = tok_cfg["kept_ids"], int(tok_cfg["context_length"])
    except FileNotFoundError:
        raise ModelError(f"shipped CLIP config {config_path} is missing ({fix})") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"shipped CLIP config {config_path} is unreadable: {err!r} ({fix})") from None
    try:
        import open_clip  # noqa: F401
    except ImportError:
        raise ModelError(f"model 'open_clip:{name}' needs open_clip: `pip install open_clip_torch`") from None
    return config, RemappedTokenizer(kept_ids, context_length), fix


def _build_embedded(name: str) -> tuple[Any, Any, Any, dict[str, Any], dict[str, Any]]:
    """``(clip_model, tokenizer, preprocess, info, config)`` of a shipped CLIP."""
    from .clip_zoo import build_clip

    weights, config_path = embedded_paths(name)
    config, tokenizer, fix = _embedded_config(name)
    arch, prep = config["architecture"], config["preprocess"]
    try:
        stat = weights.stat()
    except FileNotFoundError:
        raise ModelError(f"shipped CLIP weights {weights} are missing ({fix})") from None
    state = _read_embedded_state(str(weights), stat.st_size, stat.st_mtime_ns, str(config.get("weights_file_sha256")), fix)
    try:
        model = build_clip(arch, init=False)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ModelError(f"shipped CLIP weights {weights} do not fit {config_path}: {err} ({fix})") from None
    model.eval()
    preprocess = GreyToRGBNormalize(float(prep["mean"]), float(prep["std"]), int(arch["vision_cfg"]["image_size"]))
    info = {
        "arch": name,
        "pretrained": None,
        "checkpoint": str(weights),
        "checkpoint_sha256": str(config.get("weights_file_sha256")),  # the file's, checked by _read_embedded_state
        "config": str(config_path),
        "trained_on": config.get("training", {}).get("dataset"),
        "recorded_test_accuracy": config.get("metrics", {}).get("test", {}).get("accuracy"),
    }
    return model, tokenizer, preprocess, info, config


def shipped_clip_vocabulary(arg: str, class_names: list[str]) -> tuple[list[str], list[str]] | None:
    """For ``qrel init``: for a shipped CLIP (``open_clip:digits_clip``), the class names outside its
    vocabulary (as prompt words) and its own class names; None for any other model (loads nothing)."""
    if arg not in EMBEDDED_CLIPS:
        return None
    config, tokenizer, _ = _embedded_config(arg)  # the tokenizer's vocabulary only: no weights read
    return tokenizer.unknown_words([prompt_name(c) for c in class_names]), list(config["class_names"])


def _check_vocabulary(arg: str, tokenizer: Any, class_names: list[str], own_names: list[str]) -> None:
    """The shipped CLIP keeps only the few hundred tokens of its training captions; a word outside
    them becomes the padding id, so classes named by unknown words get identical prompts and one
    text embedding: a head that cannot tell them apart (every image scored 1/C). Refused here."""
    unknown = tokenizer.unknown_words([prompt_name(c) for c in class_names])
    if not unknown:
        return
    shown = ", ".join(repr(n) for n in unknown[:6]) + (", ..." if len(unknown) > 6 else "")
    example = ", ".join(own_names[: min(len(class_names), len(own_names))])
    raise ModelError(
        f"{_where(arg)}: {len(unknown)} of {len(class_names)} class names ({shown}) are not in the vocabulary of this "
        f"shipped demo CLIP, trained on digit captions only (it knows the digits' names such as {', '.join(own_names[:3])} and "
        "a few prompt words); "
        "their prompts would be identical and its zero-shot head could not tell the classes apart (fix: for a dry run on "
        f"your folders give the ID set's options 'class_names: [{example}]', one per class folder in sorted order; "
        "for a real audit use your CLIP: 'open_clip:<arch>/<tag>' or 'open_clip:<arch>' with option 'checkpoint')"
    )


# --------------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------------


# zero_shot: the engine passes the ID dataset's class names as `class_names` unless the suite gives them.
@MODEL_SOURCES.register("open_clip", zero_shot=True, check_options=lambda arg, options: _check_options(options, arg))
def open_clip_model_source(arg: str, *, options: Mapping[str, Any] | None = None, base_dir: Path | None = None) -> LoadedModel:
    """``source: "open_clip:<arch>/<tag>"``, ``"open_clip:<arch>"`` + ``checkpoint``, or ``"open_clip:digits_clip"``.

    Raises:
        ModelError: unknown arch / tag / option, weights not available locally (names the paths looked
            at and the fetch command), a checkpoint that does not fit, unreadable option files.
    """
    options = dict(options or {})
    base_dir = Path(base_dir or Path.cwd())
    _check_options(options, arg)
    if not arg:
        raise ModelError("model 'open_clip:': name an architecture and tag, e.g. 'open_clip:ViT-B-32/openai'")

    if arg in EMBEDDED_CLIPS:
        given = [k for k in ("checkpoint", "weights_cache_dir", "quick_gelu", "pretrained", "seed", "model_config") if k in options]
        if given:
            raise ModelError(f"{_where(arg)}: the shipped model takes no '{given[0]}' (its weights are its own; "
                             "'checkpoint', 'weights_cache_dir', 'quick_gelu', 'pretrained', 'seed' and 'model_config' are for "
                             "'open_clip:<arch>')")
        clip_model, tokenizer, preprocess, info, config = _build_embedded(arg)
        defaults = {
            "class_names": list(config["class_names"]),
            "templates": list(config["templates"]),
            "neg_labels": list(config["neg_labels"]),
            "n_neg": int(config["n_neg"]),
            "neg_template": str(config["neg_template"]),
            "neglabel_groups": int(config["neglabel_groups"]),
            "generic_prompts": list(config["generic_prompts"]),
            "cache_dir": None,
        }
        tokenizer_id = f"{arg}:{tokenizer.describe()}:{hashlib.sha256(json.dumps(tokenizer.kept_ids).encode()).hexdigest()[:16]}"
    else:
        clip_model, tokenizer, preprocess, info = _build_pretrained(arg, options, base_dir)
        from .clip_zoo import GENERIC_PROMPTS

        defaults = {
            "class_names": "imagenet1k_names",
            "templates": "openai",
            "neg_labels": None,  # timm's 21k lemmas, read only when needed
            "n_neg": DEFAULT_N_NEG,
            "neg_template": DEFAULT_NEG_TEMPLATE,
            "neglabel_groups": DEFAULT_NEGLABEL_GROUPS,
            "generic_prompts": list(GENERIC_PROMPTS),
            "cache_dir": default_cache_dir(),
        }
        tokenizer_id = f"open_clip.get_tokenizer({info['arch']!r}):{type(tokenizer).__name__}"

    opt = {**defaults, **options}
    class_names = _class_names(opt["class_names"], arg, base_dir)
    templates = _templates(opt["templates"], arg)
    if arg in EMBEDDED_CLIPS:
        _check_vocabulary(arg, tokenizer, class_names, list(config["class_names"]))
    if opt["neg_labels"] is None:
        candidates = default_negative_vocabulary()
    else:
        candidates = _string_list(opt["neg_labels"], "neg_labels", arg, base_dir)
    # scalars: checked by _check_options (given) or the model's own config (defaults)
    n_neg, groups, neg_template = opt["n_neg"], opt["neglabel_groups"], opt["neg_template"]
    percentile = opt.get("neg_percentile", DEFAULT_NEG_PERCENTILE)
    generic = _string_list(opt["generic_prompts"], "generic_prompts", arg, base_dir, allow_file=False)
    linear_attention = opt.get("linear_attention", True)
    cache_dir = opt["cache_dir"]
    if cache_dir is False or cache_dir is None:
        cache_dir = None
    else:
        cache_dir = _path(cache_dir, base_dir, "cache_dir", arg)

    import torch

    try:
        text_device = torch.device(opt.get("text_device", "cpu"))
        torch.empty(0, device=text_device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ModelError(f"{_where(arg)}: option 'text_device' {opt.get('text_device')!r} is not usable: {err}") from None
    try:
        clip_model.to(text_device)
        text = _text_side(
            clip_model, tokenizer, tokenizer_id, class_names=class_names, templates=templates, candidates=candidates,
            n_neg=n_neg, neg_template=neg_template, neg_percentile=float(percentile), generic_prompts=generic,
            cache_dir=cache_dir, device=text_device,
        )  # fmt: skip
    except ModelError as err:
        raise ModelError(f"{_where(arg)}: {err}") from None
    finally:
        clip_model.to("cpu")

    from .clip_zoo import ZeroShotCLIP

    logit_scale = float(clip_model.logit_scale.detach().exp())
    visual = clip_model.visual
    # The fingerprint hashes the checkpoint (both towers) and the prompts, never the computed text
    # features: those are float results that vary with the torch build and thread count.
    with torch.no_grad():
        checkpoint_sha = state_dict_sha256(clip_model)
    # Captions of image-text calibration data (calibration.data: imagetext:...) become QAT targets
    # through the same frozen text tower; the closure keeps it (the visual tower is shared anyway).
    info["encode_captions"] = _caption_encoder(clip_model, tokenizer, tokenizer_id, checkpoint_sha, cache_dir, text_device)
    del clip_model
    module = ZeroShotCLIP(visual, text.class_features, logit_scale, linear_attention=linear_attention).eval()
    for p in module.parameters():
        p.requires_grad_(False)

    digest = hashlib.sha256(json.dumps([text.negative_labels, text.generic_prompts, neg_template]).encode())
    info.update(
        {
            "source": f"open_clip:{arg}",
            "templates": templates,
            "neg_template": neg_template,
            "text_cache_dir": str(cache_dir) if cache_dir else None,
            "clip_text_sha256": digest.hexdigest(),
            "clip": {
                "logit_scale": logit_scale,
                "class_text_features": text.class_features,
                "negative_text_features": text.negative_features,
                "negative_labels": text.negative_labels,
                "generic_text_features": text.generic_features,
                "generic_prompts": text.generic_prompts,
                "neg_scale": logit_scale,
                "neglabel_groups": groups,
                "mcm_tau": MCM_TAU,
            },
        }
    )
    # The prompt names (``_`` read as a space) are hashed where they differ from the class names: the
    # head they build is another one, and a class list without ``_`` keeps its earlier digest.
    names = [prompt_name(c) for c in class_names]
    extra = ([names] if names != class_names else []) + ([info["model_config_sha256"]] if "model_config_sha256" in info else [])
    sha = hashlib.sha256(json.dumps([checkpoint_sha, class_names, templates, tokenizer_id, linear_attention, *extra]).encode()).hexdigest()
    return LoadedModel(
        name=arg,
        module=module,
        preprocess=preprocess,
        preprocessing=preprocess.describe(),
        weights_sha256=sha,
        num_classes=len(class_names),
        class_names=class_names,
        info=info,
    )
