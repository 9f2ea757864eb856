"""Export a training run to the formats other tools load: a Hugging Face package, GGUF, an Ollama model dir.

    export_hf(run_dir, output_dir)       transformers / vLLM package (Llama or Qwen3 family)
    export_gguf(run_dir, output)         one .gguf file for llama.cpp (arch llama, or qwen3 with QK-norm)
    export_ollama(run_dir, output_dir)   model.gguf + Modelfile for `ollama create`
    load_hf_package(path)                the reverse: a Llama/Qwen3 HF package -> (ModelConfig, state dict)
"""

from perkunas_ray.export.errors import ExportError
from perkunas_ray.export.gguf_export import export_gguf
from perkunas_ray.export.hf import export_hf
from perkunas_ray.export.hf_import import load_hf_package
from perkunas_ray.export.ollama import export_ollama

__all__ = ["ExportError", "export_gguf", "export_hf", "export_ollama", "load_hf_package"]
