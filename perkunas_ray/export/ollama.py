"""Export a run as an Ollama model dir: model.gguf plus a Modelfile for `ollama create NAME -f Modelfile`."""

from __future__ import annotations

import json
from pathlib import Path

from perkunas_ray.export.gguf_export import GGUF_DTYPES, gguf_arch, write_gguf
from perkunas_ray.export.manifest import write_export_manifest
from perkunas_ray.export.source import check_dtype, load_export_source
from perkunas_ray.export.staging import check_output, staged_dir
from perkunas_ray.export.tokenizer_files import ExportTokenizer

GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
DEFAULT_SYSTEM = "You are a tiny story generator. Continue the story."
# Completion: the prompt is the start of a story. Chat: the role-token format of perkunas_ray.chat_template.
RAW_TEMPLATE = "{{ .Prompt }}"
CHAT_TEMPLATE_GO = ("{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}"
                    "{{ if .Prompt }}<|user|>{{ .Prompt }}<|end|>{{ end }}<|assistant|>{{ .Response }}")


def _quote(text: str) -> str:
    """A Modelfile string: triple quotes when the text has a quote or a newline."""
    if '"' in text or "\n" in text:
        if '"""' in text:
            raise ValueError(f"cannot quote {text!r} in a Modelfile")
        return f'"""{text}"""'
    return json.dumps(text)


def modelfile(tok: ExportTokenizer, chat: bool = False, system: str = DEFAULT_SYSTEM, temperature: float = 0.8,
              top_p: float = 0.95) -> str:
    """The Modelfile text: FROM the gguf beside it, sampling parameters, stop tokens, TEMPLATE, SYSTEM."""
    lines = [f"FROM ./{GGUF_FILE}", "", f"PARAMETER temperature {temperature:g}", f"PARAMETER top_p {top_p:g}"]
    for token_id in tok.stop_token_ids if chat else [tok.eos_token_id]:
        lines.append(f"PARAMETER stop {_quote(tok.token(token_id))}")
    lines += ["", f"TEMPLATE {_quote(CHAT_TEMPLATE_GO if chat else RAW_TEMPLATE)}", "", f"SYSTEM {_quote(system)}", ""]
    return "\n".join(lines)


def export_ollama(run_dir: str | Path, output_dir: str | Path, dtype: str = "f16", overwrite: bool = False,
                  step: int | None = None, tokenizer_dir: str | Path | None = None, chat: bool = False,
                  system: str = DEFAULT_SYSTEM, temperature: float = 0.8, top_p: float = 0.95) -> Path:
    """Write model.gguf, Modelfile and perkunas_export_manifest.json into `output_dir`."""
    output_dir = Path(output_dir)
    check_dtype(dtype, GGUF_DTYPES)
    check_output(output_dir, overwrite, "--output-dir", is_dir=True, sources=(run_dir, tokenizer_dir))
    source = load_export_source(run_dir, step, tokenizer_dir, target="GGUF")
    text = modelfile(source.tokenizer, chat=chat, system=system, temperature=temperature, top_p=top_p)
    with staged_dir(output_dir, overwrite) as tmp:
        write_gguf(source, tmp / GGUF_FILE, dtype)
        (tmp / MODELFILE).write_text(text, encoding="utf-8")
        write_export_manifest(tmp, source, kind="ollama", architecture=gguf_arch(source.config), dtype=dtype)
    return output_dir
