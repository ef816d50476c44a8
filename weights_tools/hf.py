"""Read a Hugging Face Whisper directory: config.json, model.safetensors (or a sharded index)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kernels.errors import AmanuensisError
from weights_tools.safetensors_io import read_safetensors

INDEX = "model.safetensors.index.json"


def read_json(path: Path) -> dict:
    """Parse a JSON object file, or raise AmanuensisError naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AmanuensisError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AmanuensisError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise AmanuensisError(f"{path}: expected a JSON object")
    return value


def _shards(directory: Path) -> list[Path]:
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    if (directory / INDEX).is_file():
        weight_map = read_json(directory / INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise AmanuensisError(f"{directory / INDEX}: no weight_map")
        shards = [directory / name for name in sorted(set(weight_map.values()))]
        for shard in shards:
            if not shard.is_file():
                raise AmanuensisError(f"{directory / INDEX}: shard {shard.name} is missing")
        return shards
    found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
    raise AmanuensisError(
        f"{directory}: no model.safetensors or {INDEX} (found: {found}); "
        "PyTorch .bin checkpoints are not read: use the safetensors revision of the model")


def read_hf(directory: Path) -> tuple[dict, dict, dict]:
    """Return (config, generation config or {}, {HF name without `model.`: fp32 array})."""
    directory = Path(directory)
    config = read_json(directory / "config.json")
    generation_path = directory / "generation_config.json"
    generation = read_json(generation_path) if generation_path.is_file() else {}
    tensors: dict[str, np.ndarray] = {}
    for shard in _shards(directory):
        for name, value in read_safetensors(shard).items():
            tensors[name.removeprefix("model.")] = value
    # The output projection is tied to the token embedding; some checkpoints store it anyway.
    proj = tensors.pop("proj_out.weight", None)
    embed = tensors.get("decoder.embed_tokens.weight")
    if proj is not None and embed is not None and not np.array_equal(proj, embed):
        raise AmanuensisError(f"{directory}: proj_out.weight differs from decoder.embed_tokens.weight; "
                              "untied output projections are not supported")
    return config, generation, tensors
