"""The DreamBooth family on tiny random SDXL-shaped models (nothing downloaded): the real subject images, every
method through the shared loop, generation from the adapter as a user loads it, the dash term at inference,
the stock-diffusers export path, the metrics' loading code, and the paper profile's exact SDXL counts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from baselines import build_method  # noqa: E402
from experiments.dreambooth import data as db  # noqa: E402
from experiments.dreambooth import metrics as mx  # noqa: E402
from experiments.dreambooth.family import DreamBoothRun  # noqa: E402
from experiments.dreambooth.generation import pipeline, unet_of  # noqa: E402
from experiments.dreambooth.models import (  # noqa: E402
    SDXL,
    add_time_ids,
    build_frozen,
    build_unet,
    encode_prompts,
    sdxl_meta_unet,
    tiny_tokenizer,
)
from experiments.harness.config import load_experiment, with_overrides  # noqa: E402
from experiments.harness.profiles import load_profile  # noqa: E402
from experiments.harness.records import read_record, run_path, validate_record  # noqa: E402

try:
    DATA = db.default_data_dir()
except FileNotFoundError:
    DATA = None
needs_data = pytest.mark.skipif(DATA is None, reason="no DreamBooth data (../shared/data/dreambooth)")


def config(profile: str, experiment: str, task: str, **sections):
    p = load_profile("dreambooth", profile)
    cfg = load_experiment("dreambooth", experiment, profile_overrides=p.overrides, profile_source=p.source,
                          method_overrides=p.method_overrides, task=task,
                          task_overrides=(p.tasks or {}).get(task))  # fmt: skip
    return with_overrides(cfg, **sections) if sections else cfg


def arrays(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


# --- data and prompts -------------------------------------------------------------------------------------------


@needs_data
def test_prompts_and_classes_parse():
    spec = db.read_prompts(DATA / db.PROMPTS_FILE)
    assert (
        len(spec.classes) == 30
        and spec.classes["vase"] == "vase"
        and spec.classes["bear_plushie"] == "stuffed animal"
    )
    assert len(spec.object_prompts) == len(spec.live_prompts) == 25
    dog, vase = db.evaluation_prompts(spec, "dog", "sks"), db.evaluation_prompts(spec, "vase", "sks")
    assert (
        dog[0] == "a sks dog in the jungle" and dog[10] == "a sks dog wearing a red hat"
    )  # live-subject list
    assert vase[10] == "a sks vase with a wheat field in the background"  # object list
    assert dog[-1] == "a cube shaped sks dog" and vase[-1] == "a cube shaped sks vase"
    assert db.without_token("a sks dog in the snow", "sks") == "a dog in the snow"
    assert db.without_token("a red sks vase", "sks") == "a red vase"


def test_training_tensor_and_sdxl_time_ids():
    from PIL import Image

    im = Image.new("RGB", (300, 200), (255, 0, 0))
    pixels, sizes = db.to_training_tensor(im, 64)
    assert pixels.shape == (3, 64, 64) and pixels.min() >= -1 and pixels.max() <= 1
    assert torch.allclose(pixels[0], torch.ones(64, 64)) and torch.allclose(pixels[1], -torch.ones(64, 64))
    # shorter side 200 -> 64: 96 x 64, centre crop 16 px from the left; original (h, w) = (200, 300)
    assert sizes.tolist() == [200, 300, 0, 16]
    ids = add_time_ids(sizes[None], 64, "cpu", torch.float32)
    assert ids.tolist() == [[200, 300, 0, 16, 64, 64]]


# --- the paper profile (no weights) -----------------------------------------------------------------------------


def test_paper_profile_is_methods_section_3():
    cfg = config("paper", "loradash-r4", "dog")
    assert cfg.model.name == SDXL and cfg.data.vae == "madebyollin/sdxl-vae-fp16-fix"
    assert cfg.model.target_modules == ("to_q", "to_k", "to_v", "to_out.0")
    t = cfg.train
    assert (t.max_steps, t.batch_size // t.grad_accum, t.grad_accum, t.lr, t.schedule) == (
        500,
        1,
        4,
        1e-4,
        "constant",
    )
    assert (
        t.mixed_precision == "fp16"
        and cfg.data.resolution == 1024
        and cfg.data.instance_prompt.startswith("a photo of")
    )
    p = build_method(cfg.method.name, **cfg.method.params).params
    assert p["r"] == 4 and p["lora_alpha"] == 4 and p["num_directions"] == 8
    for name in ("lora-r4", "dora-r4", "loradash-r4"):  # diffusers' DreamBooth LoRA init, as the paper's runs
        c = config("paper", name, "dog")
        assert build_method(c.method.name, **c.method.params).params["init_lora_weights"] == "gaussian"
    assert build_method(config("smoke", "lora-r4", "dog").method.name).params["init_lora_weights"] is True
    assert load_profile("dreambooth", "paper").seeds == (0,)
    # the verdict profile: the same runs with five seeds
    five = load_profile("dreambooth", "paper-5seeds")
    assert (
        five.seeds == (0, 1, 2, 3, 4) and five.experiments == load_profile("dreambooth", "paper").experiments
    )
    for name in ("loradash-r4", "full"):
        a, b = config("paper", name, "cat"), config("paper-5seeds", name, "cat")
        assert dataclasses.replace(b, eval=a.eval, sources=a.sources) == a
    assert cfg.eval.num_inference_steps == 50 and cfg.eval.images_per_prompt == 4


def test_sdxl_unet_counts_on_the_meta_device():
    from baselines.budget import base_param_count, target_layer_shapes

    unet = sdxl_meta_unet()
    assert base_param_count(unet) == 2_567_463_684  # SDXL base 1.0's UNet
    shapes = target_layer_shapes(unet, ["to_q", "to_k", "to_v", "to_out.0"])
    assert len(shapes) == 4 * 140  # 70 transformer blocks x 2 attentions x 4 projections
    lora = build_method("lora", r=4, lora_alpha=4)
    assert type(lora).analytic_trainable(shapes, 4, 0, **lora.params) == 5_806_080
    est = DreamBoothRun.estimate(config("paper", "loradash-r4", "dog"))
    assert est is not None and est["trainable"] == 5_806_080 + 8 * 560 and est["launch_update"] == 100
    assert est["layout"] == "1 x 4" and est["memory_gb"] > 0 and est["gpu_hours"] > 0
    assert DreamBoothRun.estimate(config("paper", "full", "dog"))["trainable"] == 2_567_463_684
    assert DreamBoothRun.estimate(config("smoke", "lora-r4", "dog")) is None  # tiny: no GPU estimate


def test_config_checks():
    cfg = config("smoke", "lora-r4", "dog")
    bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resolution=60))
    assert "data.resolution" in dict(DreamBoothRun.check_config(bad))
    bad = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name="tiny:sd15"))
    assert "model.name" in dict(DreamBoothRun.check_config(bad))
    bad = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, class_prompt="a photo of {token} {cls}")
    )
    assert "data.class_prompt" in dict(DreamBoothRun.check_config(bad))
    assert DreamBoothRun.check_config(cfg) == []


@needs_data
def test_missing_subject_or_class_is_an_error_naming_the_file(tmp_path):
    cfg = config("smoke", "lora-r4", "dog")
    missing = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, task="corgi"))
    with pytest.raises(ValueError, match="prompts_and_classes.txt: subject 'corgi' has no class row"):
        DreamBoothRun.check_data(missing)
    named = dataclasses.replace(missing, data=dataclasses.replace(missing.data, class_name="dog"))
    with pytest.raises(FileNotFoundError, match="dataset/corgi .*subjects there: backpack, cat, dog, vase"):
        DreamBoothRun.check_data(named)


# --- the loop, every method ---------------------------------------------------------------------------------------


TINY_EXPERIMENTS = ["lora-r4", "dora-r4", "loradash-r4", "full"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Every method on the tiny paper path: batch 2 x accumulation 2 with prior preservation on an object
    subject (vase), 5 prompts x 2 seeds, grids written; records in a shared folder."""
    from experiments.harness.train import run

    if DATA is None:
        pytest.skip("no DreamBooth data")
    root = tmp_path_factory.mktemp("dreambooth_runs")
    records = {}
    for experiment in TINY_EXPERIMENTS:
        cfg = config("tiny", experiment, "vase", eval={"image_dir": str(root / "images"), "max_prompts": 5})
        records[experiment] = run(cfg, seed=0, lr=1e-3, profile="tiny", results_dir=root, progress=False)
    return root, records


@pytest.mark.parametrize("experiment", TINY_EXPERIMENTS)
def test_tiny_paper_path_every_method(experiment, tiny_runs):
    """A schema-valid record labelled as random weights, the score recomputed from its items, and the grid."""
    from PIL import Image

    root, records = tiny_runs
    rec = records[experiment]
    assert (
        read_record(run_path(root, "tiny", "dreambooth", experiment, 0, 1e-3, "vase"))["test"] == rec["test"]
    )
    assert validate_record(rec, "dino") == [] and rec["status"] == "complete"
    assert rec["identity"]["model"]["random_weights"] is True
    assert rec["examples_seen"] == 4 * 2 * 2  # 4 steps x 2 instance images, each with a class image
    task = rec["test"]["per_task"]["vase"]
    assert task["n"] == 5 * 2 and task["prompts"][0] == "a sks vase in the jungle"
    items = {k: np.asarray(v) for k, v in task["items"].items()}
    assert DreamBoothRun.task_score("vase", items) == pytest.approx(task["dino"])
    idx = np.array([np.arange(task["n"]), np.zeros(task["n"], dtype=int)])
    assert DreamBoothRun.task_scores("vase", items, idx)[0] == pytest.approx(task["dino"])
    assert all(-1 <= x <= 1 for k in ("dino", "clip_i", "clip_t") for x in task["items"][k])
    assert len(task["drift_items"]["drift"]) == 4 and all(-1 <= v <= 1 for v in task["real_images"].values())
    with Image.open(task["grid"]) as grid:
        # a first row of the subject's real images, then one row per prompt, each under a one-line label
        assert grid.format == "PNG" and grid.size == (2 * 128, (1 + 5) * (128 + 14))
    if experiment == "loradash-r4":
        d = rec["diagnostics"]
        assert d["launch_step"] == 2 and d["launched_layers"] == d["num_layers"] > 0
    # the same base model, images and metric models in every run: the reference row is identical
    assert task["real_images"] == records["lora-r4"]["test"]["per_task"]["vase"]["real_images"]


def test_methods_side_by_side(tiny_runs, tmp_path):
    from PIL import Image

    from experiments.dreambooth.generation import side_by_side

    _, records = tiny_runs
    grids = {e: r["test"]["per_task"]["vase"]["grid"] for e, r in records.items()}
    out = side_by_side({e: Path(p) for e, p in grids.items()}, tmp_path / "vase.png")
    with Image.open(out) as im:
        assert im.size == (4 * 2 * 128, 16 + (1 + 5) * (128 + 14))


def test_tables_write_the_grids_side_by_side_and_no_finding_from_random_models(tiny_runs):
    """`make tables` on the tiny runs: no table or verdict (random weights), and one PNG per subject, seed and
    rate with every method's grid under its name, labelled as random weights."""
    from PIL import Image

    from experiments.report.tables import write_tables

    root, records = tiny_runs
    written = write_tables("dreambooth", "tiny", root, n_boot=50)
    note = (root / "tiny" / "dreambooth" / "table.md").read_text()
    assert "No table" in note and "random weights" in note
    assert not (root / "tiny" / "dreambooth" / "verdict.md").exists()
    grid = root / "tiny" / "dreambooth" / "grids" / "vase_seed0_lr1e-3.png"
    assert grid in written
    with Image.open(grid) as im:
        assert im.size == (len(TINY_EXPERIMENTS) * 2 * 128, 16 + (1 + 5) * (128 + 14))
    again = grid.read_bytes()
    write_tables("dreambooth", "tiny", root, n_boot=50)
    assert grid.read_bytes() == again  # deterministic


def test_dreambooth_claims_are_judged_on_dino_when_the_models_are_real():
    """The family's claims on simulated per-image DINO similarities of real-model runs (5 seeds, 4 subjects):
    a clear gain of LoRA-Dash is supported, a clear loss refutes, and "matches DoRA" shows nothing unless DoRA
    beats LoRA."""
    from experiments.report import stats
    from experiments.report.tables import judge, load_claims

    margin, claims = load_claims("dreambooth")
    assert margin == 1.0 and {c.id for c in claims} >= {"same-rank-r4", "vs-dora-r4"}
    assert all((DreamBoothRun.folder() / n).is_dir() for c in claims for n in (c.treatment, c.reference))

    def scores(effects):
        rng = np.random.default_rng(0)
        table = {name: {} for name in effects}
        for subject in ("dog", "cat", "vase", "backpack"):
            base = rng.uniform(
                0.4, 0.8, 100
            )  # 25 prompts x 4 images, same prompts and seeds for every method
            for seed in range(5):
                for name, effect in effects.items():
                    dino = np.clip(base + effect + rng.normal(0, 0.01) + rng.normal(0, 0.05, 100), -1, 1)
                    table[name].setdefault(subject, {})[seed] = {"ids": np.arange(100), "dino": dino}
        tasks = stats.check_alignment(table)
        idx = stats.boot_indices({t: 100 for t in tasks}, n_boot=300)
        return {
            n: stats.score_experiment(t, tasks, idx, DreamBoothRun.task_scores, 100.0)
            for n, t in table.items()
        }

    by_id = lambda out: {c["claim"]["id"]: c["verdict"] for c in out["claims"]}  # noqa: E731
    gain = by_id(
        judge(claims, margin, scores({"loradash-r4": 0.06, "lora-r4": 0.0, "dora-r4": 0.05, "full": 0.06}))
    )
    assert gain["same-rank-r4"] == "supported" and gain["vs-dora-r4"] == "supported"
    worse = by_id(
        judge(claims, margin, scores({"loradash-r4": -0.04, "lora-r4": 0.0, "dora-r4": 0.0, "full": 0.0}))
    )
    assert worse["same-rank-r4"] == "excluded" and worse["vs-dora-r4"] == "excluded"
    equal = by_id(
        judge(claims, margin, scores({"loradash-r4": 0.0, "lora-r4": 0.0, "dora-r4": 0.0, "full": 0.0}))
    )
    assert equal["vs-dora-r4"] == "inconclusive"  # "matches DoRA", but DoRA does not beat LoRA: no power


@needs_data
def test_fp16_weights_train_and_generate(tmp_path):
    """The paper keeps the frozen weights in fp16 (the adapter's own parameters stay fp32): the same path with
    fp16 weights on the CPU (autocast, the GPU half of the paper's layout, needs a GPU)."""
    from experiments.harness.train import run

    cfg = config("smoke", "loradash-r4", "dog", model={"dtype": "float16"}, eval={"max_prompts": 2})
    rec = run(cfg, seed=0, lr=1e-3, profile="smoke", results_dir=tmp_path, progress=False)
    assert rec["status"] == "complete" and np.isfinite(rec["validation_curve"][-1]["val_loss"])
    assert rec["diagnostics"]["launched_layers"] == rec["diagnostics"]["num_layers"] > 0
    run_ = DreamBoothRun(cfg)
    assert run_.build_model().dtype == torch.float16 and run_.frozen("cpu").vae.dtype == torch.float16


@needs_data
@pytest.mark.parametrize("experiment", ["loradash-r4", "full"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(experiment):
    """`model.gradient_checkpointing` switches diffusers' own UNet checkpointing on through the family (the loop
    calls transformers' API for the other families); recomputing activations changes no number."""
    cfg = config("smoke", experiment, "dog", model={"gradient_checkpointing": True})
    assert DreamBoothRun.check_config(cfg) == []
    run = DreamBoothRun(cfg)
    batch = next(iter(run.train_loader(0, 2)))
    grads = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        base = run.build_model()
        if checkpointing:
            run.enable_gradient_checkpointing(base)
        method = build_method(cfg.method.name, **cfg.method.params)
        model = method.wrap(base, target_modules=list(cfg.model.target_modules))
        model.train()
        assert base.is_gradient_checkpointing is checkpointing
        torch.manual_seed(1)  # the loss draws its noise and timesteps from torch's generator
        loss = run.loss(model, batch)
        loss.backward()
        grads[checkpointing] = (
            loss.item(),
            {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad},
        )
    (l0, g0), (l1, g1) = grads[False], grads[True]
    assert l0 == pytest.approx(l1, rel=1e-6) and g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)


# --- the adapter at inference -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_dash():
    """A LoRA-Dash UNet trained across its launch with the family's loss (scalars' rate x200, so that lambda
    visibly moves in 4 steps)."""
    if DATA is None:
        pytest.skip("no DreamBooth data")
    cfg = config("smoke", "loradash-r4", "dog")
    cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, params={**cfg.method.params,
                                                                                  "lambda_lr_ratio": 200.0}))  # fmt: skip
    run = DreamBoothRun(cfg)
    method = build_method(cfg.method.name, **cfg.method.params)
    torch.manual_seed(0)
    model = method.wrap(run.build_model(), target_modules=list(cfg.model.target_modules))
    opt = torch.optim.AdamW([g for g in method.param_groups(model, 1e-3) if g["params"]], lr=1e-3)
    batches = iter(run.train_loader(0, 1))
    for step in range(1, 5):
        run.loss(model, next(batches)).backward()
        opt.step()
        opt.zero_grad()
        method.on_optimizer_step(model, step)
    model.eval()
    return run, model


def test_loaded_adapter_draws_what_the_trained_model_draws_and_the_dash_term_matters(trained_dash):
    import loradash

    run, model = trained_dash
    jobs = [("a sks dog in the snow", 0), ("a red sks dog", 1)]
    assert all(m.is_launched(a) for _, m, a in loradash.dash_layers(model))
    trained = arrays(run.draw(unet_of(model), jobs, "cpu"))
    loaded = run.reload(model, "cpu")  # save_pretrained -> loradash.from_pretrained onto a fresh base UNet
    assert np.array_equal(arrays(run.draw(unet_of(loaded), jobs, "cpu")), trained)
    with torch.no_grad():
        for _, m, a in loradash.dash_layers(loaded):
            assert m.lora_dash_lambda[a].weight.abs().max() > 0.05
            m.lora_dash_lambda[a].weight.zero_()  # the same adapter without the dash term
    assert np.abs(arrays(run.draw(unet_of(loaded), jobs, "cpu")) - trained).max() > 10


def test_export_loads_in_a_stock_diffusers_pipeline(trained_dash, tmp_path):
    """The user path for stock tools: export_as_lora(layout="diffusers") + pipeline.load_lora_weights."""
    import loradash

    run, model = trained_dash
    jobs = [("a sks dog on the beach", 2)]
    trained = arrays(run.draw(unet_of(model), jobs, "cpu"))
    base = arrays(run.draw(run.build_model(), jobs, "cpu"))
    loradash.export_as_lora(model, tmp_path, layout="diffusers", prefix="unet")
    pipe = pipeline(run.frozen("cpu"), run.build_model())
    pipe.load_lora_weights(str(tmp_path))
    exported = arrays(run.draw(pipe.unet, jobs, "cpu"))
    assert np.abs(exported - trained).max() <= 1  # fp32 rounding of the rank r + s product, at most 1/255
    assert np.abs(exported - base).max() > 10


# --- model and metric loading code --------------------------------------------------------------------------------


def test_diffusers_folder_loads_as_the_tiny_model(tmp_path):
    """The hub code path (from_pretrained of a diffusers-layout folder) on the tiny pipeline saved to disk."""
    parts = build_frozen("tiny:sdxl")
    pipeline(parts, build_unet("tiny:sdxl")).save_pretrained(tmp_path)
    unet, tiny = build_unet(str(tmp_path)), build_unet("tiny:sdxl")
    assert all(
        torch.equal(a, b) for a, b in zip(unet.state_dict().values(), tiny.state_dict().values(), strict=True)
    )
    loaded = build_frozen(str(tmp_path))
    a, b = (
        encode_prompts(loaded, ["a photo of sks dog"], "cpu"),
        encode_prompts(parts, ["a photo of sks dog"], "cpu"),
    )
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.noise_scheduler.config.prediction_type == "epsilon"


def test_metric_models_load_from_folders(tmp_path):
    from PIL import Image

    tiny_dino, tiny_clip = (
        mx.DinoEncoder("tiny:vit", "cpu"),
        mx.ClipEncoder("tiny:clip", "cpu", tiny_tokenizer=tiny_tokenizer()),
    )
    tiny_dino.model.save_pretrained(tmp_path / "dino")
    tiny_clip.model.save_pretrained(tmp_path / "clip")
    tiny_clip.tokenizer.save_pretrained(tmp_path / "clip")
    dino, clip = mx.DinoEncoder(str(tmp_path / "dino"), "cpu"), mx.ClipEncoder(str(tmp_path / "clip"), "cpu")
    assert (dino.prep.resize, dino.prep.crop, clip.prep.resize, clip.prep.crop) == (37, 32, 32, 32)
    g = np.random.default_rng(0)
    images = [Image.fromarray(g.integers(0, 255, (240, 260, 3), dtype=np.uint8)) for _ in range(3)]
    emb = dino.embed(images)
    assert emb.shape == (3, 32) and torch.allclose(emb.norm(dim=1), torch.ones(3))
    sim = mx.similarity_to_references(emb, emb[:2])
    assert sim.shape == (3,) and sim[0] == pytest.approx((1 + float(emb[0] @ emb[1])) / 2, abs=1e-6)
    t = clip.embed_texts(["a dog", "a vase in the snow"])
    i = clip.embed_images(images[:2])
    assert t.shape == i.shape == (2, 16)
    assert mx.paired_cosine(i, t) == pytest.approx((i * t).sum(1).numpy(), abs=1e-6)


def test_grid_starts_with_the_real_images_and_wraps_long_prompts():
    from PIL import Image

    from experiments.dreambooth.generation import LINE, image_grid

    real = [Image.new("RGB", (300, 200), c) for c in ("red", "blue", "green")]
    made = [Image.new("RGB", (64, 64), "white")] * 4
    long_prompt = "a sks vase on top of a wooden table in a sunlit kitchen, next to a bowl of oranges"
    grid = image_grid(made, cols=2, labels=["short", long_prompt], cell=128, reference=real)
    short_row, ref_row = 128 + LINE + 2, 128 + LINE + 2
    assert grid.width == 2 * 128 and grid.height > ref_row + short_row + 128 + 2 * LINE  # the long one wraps
    # the real images come first (two of three: a row holds `cols`), under their label
    assert grid.getpixel((64, LINE + 2 + 64)) == (255, 0, 0) and grid.getpixel((192, LINE + 2 + 64)) == (
        0,
        0,
        255,
    )


def test_side_by_side_wraps_long_names_and_writes_atomically(tmp_path, monkeypatch):
    import os

    from PIL import Image

    from experiments.dreambooth.generation import LINE, side_by_side

    paths = {}
    for name in ("lora-r4", "loradash-r4-with-a-very-long-experiment-name (random weights)"):
        paths[name] = tmp_path / f"{len(paths)}.png"
        Image.new("RGB", (128, 128), "white").save(paths[name])
    out = side_by_side(paths, tmp_path / "out.png")
    with Image.open(out) as im:
        assert im.size[1] > 128 + 2 * LINE  # the long name took more than one header line
    before = out.read_bytes()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        side_by_side(dict(reversed(list(paths.items()))), out)
    assert out.read_bytes() == before and not list(tmp_path.glob(".tmp-*"))  # the old picture kept whole
