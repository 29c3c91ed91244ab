rule teacher_sft:
    input:
        train=f"{R}/data/train.jsonl",
        base=[f"{R}/base_model"] if config["model"]["name_or_path"] else [],
        val=validation_input("teacher_sft"),
    output:
        model=directory(f"{R}/teacher"),
        metrics=report(f"{R}/teacher_metrics.jsonl", caption="../report/teacher_metrics.rst", category="teacher",
                       labels={"file": "training log"}),
    log:
        f"{R}/logs/teacher_sft.log",
    threads: config["threads"]
    resources:
        gpu=0 if config["device"] == "cpu" else config["gpus"],
    params:
        args=training_args("teacher_sft"),
        # a pretrained model starts from its converted checkpoint (rule convert_model), not the hub / GGUF
        base=lambda wc, input: f"--name-or-path {input.base} --gguf-file none" if input.base else "",
        runtime=runtime_flags(),
        launch=trainer("teacher_sft"),
    conda:
        CONDA_ENV
    shell:
        "{params.launch} --train {input.train} --out {output.model} --metrics {output.metrics} "
        "{params.args} {params.base} {params.runtime} --threads {threads} > {log} 2>&1"


rule teacher_cot:
    input:
        teacher=f"{R}/teacher",
        train=f"{R}/data/train.jsonl",
    output:
        records=f"{R}/teacher_cot/train.jsonl",
        summary=report(f"{R}/teacher_cot/summary.json", caption="../report/teacher_cot.rst", category="teacher",
                       labels={"file": "CoT keep rate"}),
    log:
        f"{R}/logs/teacher_cot.log",
    threads: config["threads"]
    resources:
        gpu=0 if config["device"] == "cpu" else 1,
    params:
        args=args("teacher_cot"),
        runtime=runtime_flags(),
    conda:
        CONDA_ENV
    shell:
        "python -m lori.teacher_cot --teacher {input.teacher} --train {input.train} --out {output.records} "
        "--summary {output.summary} {params.args} {params.runtime} --threads {threads} > {log} 2>&1"
