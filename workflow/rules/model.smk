# The pretrained base model (model.name_or_path), converted once to a safetensors checkpoint
# that teacher_sft starts from. Only in the DAG when model.name_or_path is set; the quickstart
# (a from-scratch model) never runs it.


def base_model_source():
    """A local model file or folder is an input (edits rerun the conversion); a hub name or pkg: is a param."""
    src = config["model"]["name_or_path"]
    return [src] if src and Path(src).exists() else []


rule base_model:
    input:
        base_model_source(),
    output:
        directory(f"{R}/base_model"),
    log:
        f"{R}/logs/base_model.log",
    params:
        args=to_flags({"src": config["model"]["name_or_path"], "gguf_file": config["model"]["gguf_file"]}),
    shell:
        "python -m lori.convert_model {params.args} --out {output} > {log} 2>&1"
