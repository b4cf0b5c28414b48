"""One typed source of settings (b4transfer.settings): the schemas and the YAML hold the same keys, a wrong
type or an unknown key is refused in one line right after composition (before any data is read), the
builders take typed settings, and a checkpoint mode says which data keys it cannot honour."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from tests.conftest import TINY, compose_cfg

from b4transfer import tasks
from b4transfer.compose import compose_config
from b4transfer.errors import NotSupportedError, UserError
from b4transfer.modes import run
from b4transfer.settings import OptimSettings, RunSettings, dotted_fields, field_type, validate
from b4transfer.settings.schema import _schema_of

ROOT = Path(__file__).resolve().parents[1]

# Each task with the data sources of its kind (a task given another's data is refused when it is read)
SOURCES = {
    "classification": ["demo", "folder", "csv"],
    "detection": ["demo_detection", "coco", "yolo"],
    "segmentation": ["demo_segmentation", "seg_folder", "voc_seg", "coco"],
}
GROUPS = [  # every choice of every other group (a few per composition: each composition takes ~0.5 s)
    ["optim=sgd", "scheduler=cosine", "finetune=gradual", "strategy=fsdp", "logger=mlflow"],
    ["optim=rmsproptf", "scheduler=step", "finetune=freeze_unfreeze", "strategy=ddp_spawn",
     "logger=wandb"],
    ["optim=lamb", "scheduler=exponential", "finetune=linear_probe", "trainer=multi_node",
     "logger=tensorboard", "precision=bf16-mixed"],
    ["experiment=finetune_small", "trainer=cpu", "logger=none"],
]
EXTRA = {"classification": [["experiment=ra2", "trainer=gpu"]]}  # the RA2 recipe is a classification recipe


def _configs(task: str) -> list:
    runs = [[f"data={d}"] for d in SOURCES[task]] + GROUPS + EXTRA.get(task, [])
    return [compose_cfg(f"task={task}", *overrides) for overrides in runs]


def _leaves(node, prefix: str, schema: type):
    """The dotted keys of a composed config, descended as far as the schema declares them."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        yield dotted
        kind = field_type(schema, dotted)
        free = any(typing.get_origin(k) is dict for k in (kind, *typing.get_args(kind)))  # a free mapping
        if isinstance(value, dict) and not free:
            yield from _leaves(value, f"{dotted}.", schema)


@pytest.fixture(scope="module")
def composed() -> dict[str, list]:
    return {task: _configs(task) for task in SOURCES}


@pytest.mark.parametrize("task", sorted(SOURCES))
def test_every_composed_key_has_a_schema_field_and_every_field_is_in_the_yaml(task, composed):
    schema = tasks.get(task).schema
    seen: set[str] = set()
    for cfg in composed[task]:
        validate(cfg)  # the whole config passes its schema (types included)
        tree = OmegaConf.to_container(cfg, resolve=False)
        keys = set(_leaves(tree, "", schema))
        assert [k for k in keys if field_type(schema, k) is None] == [], cfg.data.source._target_
        seen |= keys
    added = {k for k in dotted_fields(schema) if _added(schema, k)}
    assert added == {"callbacks", "model.hub_timeout"}  # +key=value only, written in no YAML
    missing = [k for k in dotted_fields(schema) if k not in seen and k not in added]
    assert missing == [], f"task={task}: schema fields no conf/ YAML holds: {missing}"


def _added(schema: type, dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    fld = {f.name: f for f in dataclasses.fields(schema)}[head]
    if not rest:
        return bool(fld.metadata.get("added"))
    return _added(_schema_of(typing.get_type_hints(schema)[head], fld), rest)


def test_a_schema_holds_types_and_no_default_of_its_own():
    """Each default is written once, in conf/: a schema field has none (MISSING), or None for a key only
    ``+key=value`` adds."""
    for task in SOURCES:
        for cls in _schemas(tasks.get(task).schema):
            for fld in dataclasses.fields(cls):
                assert fld.default_factory is dataclasses.MISSING, (cls, fld.name)
                assert fld.default == "???" or (fld.default is None and fld.metadata.get("added")), fld.name


def _schemas(schema: type) -> set[type]:
    found = {schema}
    hints = typing.get_type_hints(schema)
    for fld in dataclasses.fields(schema):
        sub = _schema_of(hints[fld.name], fld)
        if sub is not None:
            found |= _schemas(sub)
    return found


# ----------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "overrides,line",
    [
        (["export.onnx_opset=abc"],
         "export.onnx_opset='abc' is not an integer. Fix: e.g. export.onnx_opset=17"),
        (["trainer.max_epochs=1.5"],
         "trainer.max_epochs=1.5 is not an integer or null. Fix: e.g. trainer.max_epochs=10"),
        (["optim.lr=fast"], "optim.lr='fast' is not a number. Fix: e.g. optim.lr=0.001"),
        (["ema.enabled=maybe"], "ema.enabled='maybe' is not true or false. Fix: e.g. ema.enabled=true"),
        (["data.augment.hflip=half"],
         "data.augment.hflip='half' is not a number. Fix: e.g. data.augment.hflip=0.5"),
        (["task=detection", "head.fpn_channels=wide"],
         "head.fpn_channels='wide' is not an integer. Fix: e.g. head.fpn_channels=128"),
        (["task=detection", "data.augment=false"],
         "data.augment=False is not a mapping of settings. Fix: e.g. data.augment.hflip=0.5"),
        (["finetune=gradual", "finetune.unfreeze_at_epochs=[a]"],
         "finetune.unfreeze_at_epochs=['a'] is not a list of integers or null. Fix: e.g. "
         "finetune.unfreeze_at_epochs=[1,2,3,4,5]"),
    ],
)
def test_a_wrong_type_is_one_line_naming_the_key_the_value_and_the_fix(overrides, line, tmp_path):
    with pytest.raises(UserError) as err:
        compose_config(overrides, run_dir=tmp_path / "r")
    assert str(err.value) == line


@pytest.mark.parametrize(
    "overrides,error,line",
    [
        (["+export.onnx_opsett=17"], UserError,
         "export.onnx_opsett=17: unknown key; closest: export.onnx_opset. Fix: correct it, or drop it "
         "(b4transfer reads no such key)"),
        (["+note=hi"], UserError, "note='hi': unknown key; no key is close"),
        (["task=detection", "+loss.name=focal"], NotSupportedError,
         "task=detection does not support loss.name=focal (loss.name is a setting of task=classification). "
         "Fix: drop loss.name, or choose task=classification"),
        (["task=segmentation", "+head.detector=fcos"], NotSupportedError,
         "task=segmentation does not support head.detector=fcos (head.detector is a setting of "
         "task=detection)"),
    ],
)
def test_an_unknown_key_is_one_line_naming_the_key_and_the_fix(overrides, error, line, tmp_path):
    with pytest.raises(error) as err:
        compose_config(overrides, run_dir=tmp_path / "r")
    assert line in str(err.value) and "\n" not in str(err.value)


def test_a_mistyped_key_in_a_config_file_is_refused_too(tmp_path):
    """Hydra merges any key a config file writes; the schema refuses the one no setting reads."""
    ConfigStore.instance().store(group="experiment", name="typo_in_a_file", package="_global_",
                                 node={"ema": {"enabled": True, "decy": 0.99}})
    with pytest.raises(UserError, match=r"^ema.decy=0.99: unknown key; closest: ema.decay, "):
        compose_config(["experiment=typo_in_a_file"], run_dir=tmp_path / "r")


def test_an_open_group_takes_new_keys_for_its_library(tmp_path):
    overrides = ["+trainer.max_steps=5", "optim=sgd", "+optim.dampening=0.1"]
    cfg = compose_config(overrides, run_dir=tmp_path / "r")
    settings = validate(cfg)
    assert settings.trainer.extra() == {"max_steps": 5} and settings.trainer.max_epochs == 10
    assert settings.optim.optimizer_kwargs() == {"momentum": 0.9, "dampening": 0.1}
    assert isinstance(settings, RunSettings) and settings.head.label_smoothing == 0.1


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["+trainer.max_step=5"], r"^trainer.max_step=5: lightning.Trainer takes no argument 'max_step' "
                                  r"\(closest: trainer.max_steps"),
        (["+optim.beta=0.9"], r"^optim.beta=0.9: timm's adamw optimizer takes no argument 'beta' "
                              r"\(closest: optim.betas\)"),
        (["optim=sgd", "+optim.betas=[0.9,0.99]"], r"^optim.betas=\[0.9, 0.99\]: timm's sgd optimizer "),
        (["scheduler=cosine", "+scheduler.cycle_limt=2"],
         r"^scheduler.cycle_limt=2: timm's create_scheduler_v2 takes no argument 'cycle_limt' \(closest: "
         r"scheduler.cycle_limit"),
        (["+finetune.unfreeze_at=1"], r"^finetune.unfreeze_at=1: finetune._target_=b4transfer.training."
                                      r"finetuning.Full takes no argument"),
        (["+trainer.callbacks=[]"],
         r"^trainer.callbacks=\[\]: b4transfer sets callbacks itself. Fix: drop it \(add one with "
         r"\+callbacks.NAME._target_="),
        (["+optim.params=[]"], r"^optim.params=\[\]: b4transfer sets params itself"),
        (["+data.augment.flip=1"],
         r"^data.augment.flip=1: timm.data.create_transform takes no argument 'flip' "
         r"\(closest: data.augment.hflip, data.augment.vflip\)"),
        (["+data.augment.input_size=64"],
         r"^data.augment.input_size=64: b4transfer sets input_size itself. "
         r"Fix: drop it \(set data.image_size\)"),
        (["strategy=ddp", "+strategy.statc_graph=true"],
         r"^strategy.statc_graph=True: Lightning's DDPStrategy \(and torch's DistributedDataParallel\) takes "
         r"no argument 'statc_graph' \(closest: strategy.static_graph"),
    ],
)
def test_an_open_group_refuses_a_key_its_library_does_not_take(tmp_path, overrides, line):
    """An undeclared key of trainer / optim / scheduler / finetune / data.augment goes to a library: one the
    library does not take (or that b4transfer sets itself) is refused in one line at composition, not a
    TypeError inside the library once training starts (or, for data.augment, once the data is built)."""
    with pytest.raises(UserError, match=line) as err:
        compose_config(overrides, run_dir=tmp_path / "r")
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)


def test_the_cli_refuses_a_wrong_type_in_one_line_before_any_data_is_read(tmp_path):
    missing = tmp_path / "nowhere"  # reading the data first would fail on it, not on the key
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "data=folder", f"data.root={missing}", "export.onnx_opset=abc",
         f"hydra.run.dir={tmp_path / 'r'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=180,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines()[1] == (
        "b4transfer: error: export.onnx_opset='abc' is not an integer. Fix: e.g. export.onnx_opset=17"
    ), result.stderr
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------- builders
def test_the_optimizer_settings_of_a_module_built_in_python_default_to_the_yaml():
    """A module built with no ``optim`` trains with conf/optim/adamw.yaml's settings (written nowhere
    else)."""
    adamw = OmegaConf.load(ROOT / "conf" / "optim" / "adamw.yaml")
    typed = OptimSettings.of(None, key="optim")
    assert (typed.name, typed.lr, typed.weight_decay) == (adamw.name, adamw.lr, adamw.weight_decay)
    assert OptimSettings.of({"lr": 0.1}, key="optim").weight_decay == adamw.weight_decay


def test_a_module_argument_of_the_wrong_type_is_one_line():
    from b4transfer.tasks.classification import ClassificationModule

    model = {"name": "test_efficientnet", "drop_rate": "high"}  # a Python caller's mistake
    refused = r"^model.drop_rate='high' is not a number\. Fix: e.g. model.drop_rate=0"
    with pytest.raises(UserError, match=refused):
        ClassificationModule(class_names=["a", "b"], model=model)


def test_the_three_task_modules_share_one_start():
    """The shared part of a task module's __init__ (its shared arguments, the saved hyper-parameters, the
    backbone) lives in TaskModule.__init__: a task module declares only its own arguments."""
    import inspect

    from b4transfer.tasks.base import TaskModule

    shared = set(inspect.signature(TaskModule.__init__).parameters) - {"self"}
    assert {"class_names", "model", "head", "optim", "scheduler", "data", "backbone"} == shared
    for task in SOURCES:
        module_class = tasks.get(task).module_class
        source = inspect.getsource(module_class.__init__)
        own = inspect.signature(module_class.__init__).parameters
        assert "super().__init__(**shared)" in source and "save_hyperparameters" not in source, task
        assert not shared & set(own) and own["shared"].kind is inspect.Parameter.VAR_KEYWORD, task
        assert shared < module_class.init_arguments(), task
        assert module_class.schema is tasks.get(task).schema and issubclass(module_class, TaskModule)


# ---------------------------------------------------------------------------------- a checkpoint mode's data
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, str]:
    from tests.conftest import make_image_folder

    root = tmp_path_factory.mktemp("schema")
    images = make_image_folder(root / "images", per_class=4, size=32)
    cfg = compose_cfg(*TINY, "data=folder", f"data.root={images}", "data.image_size=32",
                      f"run_dir={root / 'train'}", "export.backbone=false")
    return images, run(cfg)["last_checkpoint"]


def test_a_checkpoint_mode_warns_in_one_line_about_a_data_key_it_cannot_honour(checkpoint, tmp_path, caplog):
    images, ckpt = checkpoint
    tiny = [o for o in TINY if not o.startswith("data.image_size")]
    base = [*tiny, "data=folder", f"data.root={images}", "mode=validate", f"ckpt_path={ckpt}"]
    with caplog.at_level(logging.WARNING, logger="b4transfer.modes.common"):
        cfg = compose_config([*base, "data.image_size=48", "data.crop_pct=0.5"], run_dir=tmp_path / "v1")
        summary = run(cfg)
    lines = [r.getMessage() for r in caplog.records if "is not used" in r.getMessage()]
    why = f"is not used: mode=validate rebuilds the model from its checkpoint ({ckpt}), which uses"
    assert lines == [
        f"data.image_size=48 {why} data.image_size=32 (it was trained with). Fix: drop data.image_size, or "
        "train with it.",
        f"data.crop_pct=0.5 {why} data.crop_pct=0.95 (the model's own, as it was trained). Fix: drop "
        "data.crop_pct, or train with it.",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="b4transfer.modes.common"):
        same = run(compose_config([*base, "data.image_size=32"], run_dir=tmp_path / "v2"))  # what it uses
    assert not [r for r in caplog.records if "is not used" in r.getMessage()]
    assert same["metrics"] == summary["metrics"]  # the key was indeed not honoured: the same numbers
