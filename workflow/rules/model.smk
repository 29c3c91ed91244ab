# The pretrained base model (model.name_or_path), converted once to a safetensors checkpoint
# that teacher_sft starts from. Only in the DAG when model.name_or_path is set; the quickstart
# (a from-scratch model) never runs it.


rule convert_model:
    input:
        base_model_source(),
    output:
        directory(f"{R}/base_model"),
    log:
        f"{R}/logs/base_model.log",
    params:
        args=args("convert_model"),
    conda:
        CONDA_ENV
    shell:
        "python -m lori.convert_model {params.args} --out {output} > {log} 2>&1"
