def distill_inputs(wc):
    inputs = {"teacher": f"{R}/teacher", "records": f"{R}/teacher_cot/train.jsonl"}
    if needs_targets(wc.method):
        factors, targets = lowrank_paths(wc.method)
        inputs.update(targets=targets, factors=factors)
    match = matched(wc.method)
    if match:
        inputs.update(match_ref=f"{R}/students/{match['ref']}_metrics.jsonl",
                      match_base=f"{R}/students/{match['base']}_metrics.jsonl")
    return inputs


def match_flags(wc, input):
    match = matched(wc.method)
    if not match:
        return ""
    return f"--match-ref {input.match_ref} --match-base {input.match_base} --match-by {match['by']}"


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
        args=lambda wc: to_flags(method_config(wc.method)),
        lowrank=lambda wc, input: (
            f"--targets {input.targets} --factors {input.factors}" if "targets" in input.keys() else ""
        ),
        match=match_flags,
        runtime=lambda wc: runtime_flags(student_seed(wc.method)),
        launch=trainer("distill"),
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
        args=to_flags(config["evaluate"]),
        runtime=runtime_flags(),
    shell:
        "python -m lori.evaluate --method {wildcards.method} --bench {wildcards.bench} --model {input.model} "
        "--data {input.data} --out {output.rows} --summary {output.summary} {params.args} {params.runtime} "
        "--threads {threads} > {log} 2>&1"
