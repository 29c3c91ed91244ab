rule dump_hidden:
    input:
        teacher=f"{R}/teacher",
        records=f"{R}/teacher_cot/train.jsonl",
    output:
        directory(f"{R}/hidden/calib.zarr"),
    log:
        f"{R}/logs/dump_hidden.log",
    threads: config["threads"]
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    params:
        args=to_flags(config["dump_hidden"]),
        runtime=runtime_flags(),
    shell:
        "python -m lori.dump_hidden --teacher {input.teacher} --records {input.records} --out {output} "
        "{params.args} {params.runtime} --threads {threads} > {log} 2>&1"


rule factorize:
    input:
        hidden=f"{R}/hidden/calib.zarr",
    output:
        directory(f"{R}/lowrank/factors.zarr"),
    log:
        f"{R}/logs/factorize.log",
    params:
        args=to_flags(config["factorize"]),
    shell:
        "python -m lori.factorize --hidden {input.hidden} --out {output} {params.args} > {log} 2>&1"


rule targets:
    input:
        teacher=f"{R}/teacher",
        records=f"{R}/teacher_cot/train.jsonl",
        factors=f"{R}/lowrank/factors.zarr",
    output:
        directory(f"{R}/targets/train.zarr"),
    log:
        f"{R}/logs/targets.log",
    threads: config["threads"]
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    params:
        args=to_flags(config["targets"]),
        runtime=runtime_flags(),
    shell:
        "python -m lori.targets --teacher {input.teacher} --records {input.records} --factors {input.factors} "
        "--out {output} {params.args} {params.runtime} --threads {threads} > {log} 2>&1"
