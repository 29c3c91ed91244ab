# dump_hidden: one job (shards: 1), or a scatter over N shards of whole batches (each its own
# Zarr store, temporary) and a gather that checks and concatenates them into the same store.
# With gpus > 1 each job runs under torchrun, its ranks splitting its batches (lori.dump_hidden).

if DUMP_SHARDS == 1:

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
            gpu=DUMP_GPUS,
        params:
            args=DUMP_ARGS,
            runtime=runtime_flags(),
        conda:
            CONDA_ENV
        shell:
            # the launcher is part of the command text, not a param: with gpus: 1 the command is
            # the one earlier versions ran, so their dumps stay cached
            trainer("dump_hidden")
            + " --teacher {input.teacher} --records {input.records} --out {output} "
            "{params.args} {params.runtime} --threads {threads} > {log} 2>&1"

else:

    rule dump_hidden_partial:
        input:
            teacher=f"{R}/teacher",
            records=f"{R}/teacher_cot/train.jsonl",
        output:
            temp(directory(f"{R}/hidden/shards/calib.part{{shard}}.zarr")),
        log:
            f"{R}/logs/dump_hidden/part{{shard}}.log",
        wildcard_constraints:
            shard=r"\d+",
        threads: config["threads"]
        resources:
            gpu=DUMP_GPUS,
        params:
            args=DUMP_ARGS,
            runtime=runtime_flags(),
            launch=trainer("dump_hidden"),
        conda:
            CONDA_ENV
        shell:
            "{params.launch} partial --teacher {input.teacher} --records {input.records} --shard {wildcards.shard} "
            "--out {output} {params.args} {params.runtime} --threads {threads} > {log} 2>&1"

    rule dump_hidden_gather:
        input:
            teacher=f"{R}/teacher",
            records=f"{R}/teacher_cot/train.jsonl",
            parts=DUMP_PARTS,
        output:
            directory(f"{R}/hidden/calib.zarr"),
        log:
            f"{R}/logs/dump_hidden.log",
        params:
            args=DUMP_ARGS,
            runtime=runtime_flags(),
            parts=lambda wc, input: ",".join(input.parts),
        conda:
            CONDA_ENV
        shell:
            "python -m lori.dump_hidden gather --teacher {input.teacher} --records {input.records} "
            "--parts {params.parts} --out {output} {params.args} {params.runtime} > {log} 2>&1"


# factorize: one job (shards: 1), or for large dumps a scatter/gather per streamed pass of the
# plan (lori.lowrank.passes.plan: moments, grams, hooi1.., diagnostics). Each pass runs one
# `partial` job per token-range shard and one `gather` summing them into the next state; the
# gather of the last pass writes the factors store, so downstream rules see the same output.
if FACTORIZE_SHARDS == 1:

    rule factorize:
        input:
            hidden=f"{R}/hidden/calib.zarr",
        output:
            directory(f"{R}/lowrank/factors.zarr"),
        log:
            f"{R}/logs/factorize.log",
        threads: config["threads"]  # BLAS threads for the Grams (Snakemake sets OPENBLAS_NUM_THREADS)
        params:
            args=args("factorize"),
        conda:
            CONDA_ENV
        shell:
            FACTORIZE_SHELL

else:

    rule factorize_partial:
        input:
            hidden=f"{R}/hidden/calib.zarr",
            state=lambda wc: factorize_state(wc.step),
        output:
            f"{SHARD_DIR}/{{step}}.part{{shard}}.npz",
        log:
            f"{R}/logs/factorize/{{step}}.part{{shard}}.log",
        wildcard_constraints:
            step="|".join(FACTORIZE_STEPS),
            shard=r"\d+",
        params:
            args=args("factorize"),
            state=factorize_state_flag,
        conda:
            CONDA_ENV
        shell:
            "python -m lori.factorize partial --hidden {input.hidden} --step {wildcards.step} "
            "--shard {wildcards.shard} {params.state} --out {output} {params.args} > {log} 2>&1"

    rule factorize_gather:
        input:
            hidden=f"{R}/hidden/calib.zarr",
            parts=lambda wc: factorize_parts(wc.step),
            state=lambda wc: factorize_state(wc.step),
        output:
            f"{SHARD_DIR}/{{step}}.state.npz",
        log:
            f"{R}/logs/factorize/{{step}}.gather.log",
        wildcard_constraints:
            step="|".join(FACTORIZE_STEPS[:-1]),
        params:
            args=args("factorize"),
            parts=lambda wc, input: ",".join(input.parts),
            state=factorize_state_flag,
        conda:
            CONDA_ENV
        shell:
            "python -m lori.factorize gather --hidden {input.hidden} --step {wildcards.step} "
            "--parts {params.parts} {params.state} --out {output} {params.args} > {log} 2>&1"

    rule factorize:
        input:
            hidden=f"{R}/hidden/calib.zarr",
            parts=factorize_parts(FACTORIZE_STEPS[-1]),
            state=factorize_state(FACTORIZE_STEPS[-1]),
        output:
            directory(f"{R}/lowrank/factors.zarr"),
        log:
            f"{R}/logs/factorize.log",
        params:
            args=args("factorize"),
            parts=lambda wc, input: ",".join(input.parts),
        conda:
            CONDA_ENV
        shell:
            "python -m lori.factorize gather --hidden {input.hidden} --step "
            + FACTORIZE_STEPS[-1]
            + " --parts {params.parts} --state {input.state} --out {output} {params.args} > {log} 2>&1"


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
        args=args("targets"),
        runtime=runtime_flags(),
    conda:
        CONDA_ENV
    shell:
        TARGETS_SHELL


# Rank-sweep variants (sweep: {lori_r1x8: {method: lori, rank_layer: 1, rank_hidden: 8}}): each rank
# pair gets its own factors and targets, tagged rl<L>-rh<H> (lori.sweep.lowrank_tag); the hidden
# dump is shared. One streamed factorize job each: a rank variant is an ablation, not a scale-out.


rule factorize_ranks:
    input:
        hidden=f"{R}/hidden/calib.zarr",
    output:
        directory(f"{R}/lowrank/factors-{{ranks}}.zarr"),
    log:
        f"{R}/logs/factorize-{{ranks}}.log",
    wildcard_constraints:
        ranks=LOWRANK_TAG,
    threads: config["threads"]
    params:
        args=lambda wc: args("factorize", ranks=wc.ranks),
    conda:
        CONDA_ENV
    shell:
        FACTORIZE_SHELL


rule targets_ranks:
    input:
        teacher=f"{R}/teacher",
        records=f"{R}/teacher_cot/train.jsonl",
        factors=f"{R}/lowrank/factors-{{ranks}}.zarr",
    output:
        directory(f"{R}/targets/train-{{ranks}}.zarr"),
    log:
        f"{R}/logs/targets-{{ranks}}.log",
    wildcard_constraints:
        ranks=LOWRANK_TAG,
    threads: config["threads"]
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    params:
        args=args("targets"),
        runtime=runtime_flags(),
    conda:
        CONDA_ENV
    shell:
        TARGETS_SHELL
