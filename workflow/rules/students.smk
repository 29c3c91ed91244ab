rule distill:
    input:
        unpack(distill_inputs),
    output:
        model=directory(f"{R}/students/{{method}}"),
        metrics=report(f"{R}/students/{{method}}_metrics.jsonl", caption="../report/student_metrics.rst",
                       category="students", labels={"method": "{method}"}),
    log:
        f"{R}/logs/distill/{{method}}.log",
    threads: config["threads"]
    resources:
        gpu=0 if config["device"] == "cpu" else config["gpus"],
    params:
        args=lambda wc: training_args("distill", student=wc.method),
        lowrank=lambda wc, input: (
            f"--targets {input.targets} --factors {input.factors}" if "targets" in input.keys() else ""
        ),
        match=match_flags,
        runtime=lambda wc: runtime_flags(wc.method),
        launch=trainer("distill"),
    conda:
        CONDA_ENV
    shell:
        "{params.launch} --teacher {input.teacher} --records {input.records} {params.lowrank} {params.match} "
        "--out {output.model} --metrics {output.metrics} {params.args} {params.runtime} --threads {threads} "
        "> {log} 2>&1"


rule evaluate:
    input:
        model=lambda wc: model_dir(wc.method),
        data=f"{R}/data/{{bench}}.jsonl",
    output:
        rows=f"{R}/eval/{{method}}/{{bench}}.jsonl",
        summary=report(f"{R}/eval/{{method}}/{{bench}}.json", caption="../report/eval.rst", category="evaluation",
                       subcategory="{bench}", labels={"method": "{method}", "benchmark": "{bench}"}),
    log:
        f"{R}/logs/evaluate/{{method}}/{{bench}}.log",
    threads: config["threads"]
    resources:
        gpu=0 if config["device"] == "cpu" else 1,
    params:
        args=args("evaluate"),
        runtime=runtime_flags(),
    conda:
        CONDA_ENV
    shell:
        "python -m lori.evaluate --method {wildcards.method} --bench {wildcards.bench} --model {input.model} "
        "--data {input.data} --out {output.rows} --summary {output.summary} {params.args} {params.runtime} "
        "--threads {threads} > {log} 2>&1"
