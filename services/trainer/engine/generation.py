"""Test generation with a trained LoRA: the "test the model" page and an X/Y comparison grid.

Images are rendered by the preview code (:func:`.previews.render_previews`: prompts encoded as in
training, image ``i`` from seed ``seed + i``, CPU generator), so a test image with the preview's
settings is the preview. The LoRA file is the kohya/A1111 ``.safetensors`` the engine writes;
diffusers' ``load_lora_weights`` converts its kohya keys (SD1 diffusers-style and SDXL SGM-style
UNet names, ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` encoders) to peft adapters, and every
module of the file is checked to have landed on a layer of the model before it is used.

A :class:`GenerationCache` keeps base models loaded between requests and their LoRAs attached as
named peft adapters; a request only switches which adapter is active and at what strength
(peft's per-adapter scale), so changing the strength or going back to an earlier LoRA reloads
nothing, and strength 0 (or no LoRA) disables every adapter: the base model's own output.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import safetensors.torch
import torch
from peft.tuners.lora import LoraLayer
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .base_model import BaseModel, load_base_model
from .errors import InvalidGenerationRequest, LoraIncompatible, Violation
from .generation_request import GenerationRequest
from .kohya_format import kohya_named_modules
from .model_store import ModelStore
from .previews import PreviewSettings, build_pipeline, render_previews

ImageCallback = Callable[[int, Image.Image], None]

_LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
_SDXL_MARKERS = ("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_middle_block_",
                 "lora_unet_output_blocks_")


def preview_settings(request: GenerationRequest, resolution: int) -> PreviewSettings:
    """The request as the preview code renders it; width and height default to `resolution`."""
    return PreviewSettings(
        request.prompt, request.negative_prompt, request.sampler, request.steps, request.cfg_scale,
        request.width or resolution, request.height or resolution, request.seed, request.count, request.clip_skip,
    )


def lora_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LoadedModel:
    """A base model in memory with the LoRAs attached to it (most recently used last).

    Hold :attr:`lock` from :meth:`activate` until the images are rendered: the adapter state is the
    model's own.
    """

    def __init__(self, model_id: str, model: BaseModel, max_adapters: int) -> None:
        self.model_id = model_id
        self.model = model
        self.max_adapters = max_adapters
        self.lock = threading.RLock()
        self.adapters: OrderedDict[str, str] = OrderedDict()  # file digest -> adapter name
        self.adapter_loads = 0
        # The pipeline object only carries diffusers' LoRA loader; rendering builds its own.
        self._loader = build_pipeline(model, "euler")

    @property
    def components(self) -> list[nn.Module]:
        return [self.model.unet, *self.model.text_encoders]

    def activate(self, lora: bytes | None, strength: float) -> str | None:
        """Attach ``lora`` (once) and make it the only active adapter, scaled by ``strength``.
        Returns the adapter's name (None without a LoRA)."""
        name = None if lora is None else self._attach(lora)
        active = name if strength != 0 else None
        for layer in self._lora_layers():
            if active is not None and active in layer.lora_A:
                layer.enable_adapters(True)
                layer.set_adapter(active, inference_mode=True)
                layer.set_scale(active, strength)
            else:
                layer.enable_adapters(False)
        return name

    def render(self, settings: PreviewSettings, on_image: ImageCallback | None = None) -> list[Image.Image]:
        for module in (*self.components, self.model.vae):
            module.eval()
        return render_previews(self.model, settings, on_image)

    def applied_modules(self, adapter: str) -> dict[str, LoraLayer]:
        """kohya module name -> the model's layer carrying it, for one attached adapter."""
        return kohya_named_modules(self.model.family, self.model.unet, self.model.text_encoders, adapter)

    def _lora_layers(self) -> list[LoraLayer]:
        return [m for component in self.components for m in component.modules() if isinstance(m, LoraLayer)]

    def _attach(self, lora: bytes) -> str:
        digest = lora_digest(lora)
        if digest in self.adapters:
            self.adapters.move_to_end(digest)
            return self.adapters[digest]
        tensors = read_lora_tensors(lora, self.model.family)
        name = f"kiln_{digest[:16]}"
        weight = next(self.model.unet.parameters())
        state = {key: value.to(weight.device, weight.dtype) for key, value in tensors.items()}
        try:
            with warnings.catch_warnings():
                # Several LoRAs on one model is the point of the cache.
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                self._loader.load_lora_weights(state, adapter_name=name)
        except (ValueError, RuntimeError, KeyError) as error:
            self._detach(name)
            raise LoraIncompatible(f"the LoRA doesn't fit {self.model_id}: {error}") from error
        expected = {_module_stem(key) for key in tensors}
        missing = sorted(expected - set(self.applied_modules(name)))
        if missing:
            self._detach(name)
            raise LoraIncompatible(
                f"{len(missing)} of the LoRA's {len(expected)} modules have no layer in {self.model_id} "
                f"and would be ignored: {', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}"
            )
        self.adapter_loads += 1
        self.adapters[digest] = name
        while len(self.adapters) > self.max_adapters:
            _, oldest = self.adapters.popitem(last=False)
            self._detach(oldest)
        return name

    def _detach(self, name: str) -> None:
        with warnings.catch_warnings():
            # peft warns that a deleted adapter was active; activate() sets the state every time.
            warnings.simplefilter("ignore")
            for component in self.components:
                for layer in component.modules():
                    if isinstance(layer, LoraLayer) and name in layer._all_available_adapter_names():
                        layer.delete_adapter(name)
                config = getattr(component, "peft_config", None)
                if isinstance(config, dict):
                    config.pop(name, None)


def read_lora_tensors(data: bytes, family: str) -> dict[str, torch.Tensor]:
    """The tensors of a kohya-format LoRA for ``family``, or :class:`LoraIncompatible` saying why not."""
    try:
        tensors = safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own SafetensorError and others
        raise LoraIncompatible(f"not a safetensors file: {error}") from error
    if not tensors:
        raise LoraIncompatible("the file holds no tensors")
    foreign = sorted(key for key in tensors if not key.endswith(_LORA_SUFFIXES) or not key.startswith("lora_"))
    if foreign:
        raise LoraIncompatible(
            f"{len(foreign)} tensors are not kohya LoRA weights (LyCORIS/DoRA files aren't supported): "
            + ", ".join(foreign[:5])
        )
    file_family = "sdxl" if any(key.startswith(_SDXL_MARKERS) for key in tensors) else "sd15"
    if file_family != family:
        raise LoraIncompatible(f"the LoRA is for {file_family}, the base model is {family}")
    return tensors


def _module_stem(key: str) -> str:
    for suffix in _LORA_SUFFIXES:
        if key.endswith(suffix):
            return key.removesuffix(suffix)
    return key


class GenerationCache:
    """Loaded base models (least recently used dropped beyond ``max_models``), each keeping up to
    ``max_adapters`` LoRAs attached. Thread-safe; requests on one model take turns.

    ``device`` / ``dtype``: where the UNet and text encoders run (the VAE stays float32, as in
    training's previews); default CPU float32, where the same request gives identical images.
    """

    def __init__(
        self,
        store: ModelStore,
        *,
        max_models: int = 1,
        max_adapters: int = 4,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_models < 1 or max_adapters < 1:
            raise ValueError("the cache holds at least one model and one adapter")
        self.store = store
        self.max_models = max_models
        self.max_adapters = max_adapters
        self.device = torch.device(device)
        self.dtype = dtype
        self.base_loads = 0
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str) -> LoadedModel:
        with self._lock:
            loaded = self._models.get(model_id)
            if loaded is not None:
                self._models.move_to_end(model_id)
                return loaded
            resolved = self.store.resolve(model_id)
            while len(self._models) >= self.max_models:
                self._models.popitem(last=False)
            model = load_base_model(resolved.entry.family, resolved.path)
            if self.device.type != "cpu" or self.dtype != torch.float32:  # loaded as CPU float32
                for module in (model.unet, *model.text_encoders):
                    module.to(self.device, self.dtype)
                model.vae.to(self.device)
            self.base_loads += 1
            loaded = LoadedModel(model_id, model, self.max_adapters)
            self._models[model_id] = loaded
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


_default_caches: dict[str, GenerationCache] = {}
_default_lock = threading.Lock()


def default_cache(store: ModelStore) -> GenerationCache:
    """The process's cache for the models of ``store`` (one per store root)."""
    key = str(store.root.resolve())
    with _default_lock:
        cache = _default_caches.get(key)
        if cache is None:
            cache = _default_caches[key] = GenerationCache(store)
        return cache


def generate(
    request: GenerationRequest,
    store: ModelStore,
    on_image: ImageCallback | None = None,
    *,
    cache: GenerationCache | None = None,
) -> list[Image.Image]:
    """``request.count`` images, image ``i`` from seed ``seed + i``; ``on_image(i, image)`` as each
    one is done (an exception from it stops the rest). Raises :class:`InvalidGenerationRequest`,
    :class:`.BaseModelUnavailable` or :class:`LoraIncompatible`."""
    problems = request.problems()
    entry = store.entry(request.base_model) if request.base_model else None
    if request.base_model and entry is None:
        problems.append(Violation("base_model", f"unknown base model {request.base_model!r}"))
    if problems or entry is None:
        raise InvalidGenerationRequest(problems)
    loaded = (cache or default_cache(store)).get(request.base_model)
    with loaded.lock:
        loaded.activate(request.lora, request.strength)
        return loaded.render(preview_settings(request, entry.resolution), on_image)


@dataclass(frozen=True)
class ComparisonGrid:
    row_labels: list[str]
    column_labels: list[str]
    images: list[list[Image.Image]]  # [row][column], full size
    sheet: Image.Image  # the labelled grid
    cells: list[list[tuple[int, int, int, int]]]  # [row][column] -> (left, top, right, bottom) on the sheet


def comparison_grid(
    request: GenerationRequest,
    rows: Sequence[tuple[str, bytes | None]],
    store: ModelStore,
    *,
    strengths: Sequence[float] | None = None,
    prompts: Sequence[str] | None = None,
    cache: GenerationCache | None = None,
    on_image: Callable[[int, int, Image.Image], None] | None = None,
    cell: int = 256,
) -> ComparisonGrid:
    """An X/Y plot for one seed (``request.seed``): one row per ``(label, LoRA bytes or None)``
    (e.g. one per epoch), one column per strength, or per prompt (at ``request.strength``).
    ``request.lora``, ``count`` and, for the varying axis, ``strength`` / ``prompt`` are ignored.
    Cells that must be identical (the base model's row, strength 0) are rendered once.
    ``on_image(row, column, image)`` as each cell is done."""
    if strengths is not None and prompts is not None:
        raise ValueError("columns are strengths or prompts, not both")
    if not rows:
        raise ValueError("a comparison needs at least one row")
    columns: list[tuple[str, GenerationRequest]]
    if prompts is not None:
        columns = [(prompt, replace(request, prompt=prompt, count=1)) for prompt in prompts]
    else:
        values = list(strengths) if strengths is not None else [request.strength]
        columns = [(f"strength {value:g}", replace(request, strength=value, count=1)) for value in values]
    if not columns:
        raise ValueError("a comparison needs at least one column")
    cache = cache or default_cache(store)
    rendered: dict[tuple, Image.Image] = {}
    images: list[list[Image.Image]] = []
    for row, (_, lora) in enumerate(rows):
        digest = None if lora is None else lora_digest(lora)
        line = []
        for column, (_, cell_request) in enumerate(columns):
            cell_request = replace(cell_request, lora=lora)
            same_as_base = digest is None or cell_request.strength == 0
            key = (None if same_as_base else digest, 0.0 if same_as_base else cell_request.strength,
                   cell_request.prompt)
            if key not in rendered:
                rendered[key] = generate(cell_request, store, cache=cache)[0]
            line.append(rendered[key])
            if on_image is not None:
                on_image(row, column, line[-1])
        images.append(line)
    row_labels = [label for label, _ in rows]
    column_labels = [label for label, _ in columns]
    sheet, cells = grid_sheet(images, row_labels, column_labels, cell)
    return ComparisonGrid(row_labels, column_labels, images, sheet, cells)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's built-in font; nothing to download
    except (ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
          width: int, max_lines: int = 3) -> list[str]:
    """Greedy word wrap into ``width`` pixels; a word too long for a line is cut, and the last
    line ends in an ellipsis when the text doesn't fit ``max_lines``."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    lines.append(current)
    lines = [_fit(draw, line, font, width) for line in lines]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _fit(draw, lines[-1] + " …", font, width, force_ellipsis=True)
    return lines


def _fit(draw: ImageDraw.ImageDraw, line: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int,
         force_ellipsis: bool = False) -> str:
    if draw.textlength(line, font=font) <= width and not force_ellipsis:
        return line
    line = line.removesuffix(" …")
    while line and draw.textlength(line + "…", font=font) > width:
        line = line[:-1]
    return line + "…"


def grid_sheet(
    images: list[list[Image.Image]], row_labels: list[str], column_labels: list[str], cell: int = 256
) -> tuple[Image.Image, list[list[tuple[int, int, int, int]]]]:
    """A1111-style X/Y sheet: column labels across the top, row labels down the left, each image
    scaled to ``cell`` pixels on its longer side. Returns the sheet and each image's box on it."""
    first = images[0][0]
    scale = cell / max(first.size)
    cell_w, cell_h = max(1, round(first.width * scale)), max(1, round(first.height * scale))
    font = _font(max(10, cell // 16))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = round(font.size * 1.3) if isinstance(font, ImageFont.FreeTypeFont) else 12
    pad = max(4, cell // 32)
    label_width = min(max(round(measure.textlength(label, font=font)) for label in row_labels), round(cell * 1.5))
    left = label_width + 2 * pad
    wrapped_columns = [_wrap(measure, label, font, cell_w - 2 * pad) for label in column_labels]
    wrapped_rows = [_wrap(measure, label, font, label_width, max_lines=max(1, cell_h // line_height))
                    for label in row_labels]
    top = max(len(lines) for lines in wrapped_columns) * line_height + 2 * pad
    sheet = Image.new("RGB", (left + len(column_labels) * cell_w, top + len(row_labels) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for column, lines in enumerate(wrapped_columns):
        middle = left + column * cell_w + cell_w // 2
        for index, line in enumerate(lines):
            x = middle - round(draw.textlength(line, font=font)) // 2
            draw.text((x, pad + index * line_height), line, fill="black", font=font)
    boxes: list[list[tuple[int, int, int, int]]] = []
    for row, (lines, line_images) in enumerate(zip(wrapped_rows, images, strict=True)):
        y = top + row * cell_h
        text_top = y + (cell_h - len(lines) * line_height) // 2
        for index, line in enumerate(lines):
            draw.text((pad, text_top + index * line_height), line, fill="black", font=font)
        row_boxes = []
        for column, image in enumerate(line_images):
            x = left + column * cell_w
            sheet.paste(image.convert("RGB").resize((cell_w, cell_h), Image.Resampling.LANCZOS), (x, y))
            row_boxes.append((x, y, x + cell_w, y + cell_h))
        boxes.append(row_boxes)
    return sheet, boxes
