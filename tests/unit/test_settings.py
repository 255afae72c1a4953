import re

import pytest

from al_core.scoring import create_scorer
from backend.api_models import parse_project_id
from backend.cycle import scorer_params
from backend.settings import Settings

from ..conftest import ROOT


def test_defaults_run_on_a_laptop_cpu():
    settings = Settings.load({})
    assert (settings.host, settings.port, settings.model_detector, settings.model_device) == (
        "127.0.0.1",
        9090,
        "cpu_preset",
        "auto",
    )


def test_environment_over_yaml_over_defaults(tmp_path):
    config = tmp_path / "backend.yaml"
    config.write_text("port: 9300\npredict_batch_size: 2\nMODEL_DETECTOR: retinanet_resnet50_fpn\n")
    settings = Settings.load({"CONFIG_FILE": str(config), "PORT": "9191", "PREDICTION_SCORE_THRESHOLD": "0.5"})
    assert settings.port == 9191 and settings.predict_batch_size == 2
    assert settings.model_detector == "retinanet_resnet50_fpn" and settings.prediction_score_threshold == 0.5


def test_bad_settings_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="setting PORT: Input should be a valid integer"):
        Settings.load({"PORT": "ninety"})
    config = tmp_path / "bad.yaml"
    config.write_text("colour: blue\n")
    with pytest.raises(ValueError, match="unknown setting COLOUR"):
        Settings.load({"CONFIG_FILE": str(config)})
    with pytest.raises(ValueError, match="AL_BOXES: all, shown or a positive number"):
        Settings.load({"AL_BOXES": "some"})
    assert Settings.load({"AL_BOXES": "5"}).boxes == 5 and Settings.load({}).boxes == "shown"
    with pytest.raises(ValueError, match="AL_CLASSES"):
        Settings.load({"AL_CLASSES": "some"})
    rule = Settings.load({"AL_COST_AWARE": "true"}).priority
    assert rule.cost_aware and not rule.near_duplicates and rule.sampling == "top"
    assert Settings.load({"AL_SAMPLING": "power"}).priority.sampling == "power"
    with pytest.raises(ValueError, match="AL_SAMPLING"):
        Settings.load({"AL_SAMPLING": "softmax"})


@pytest.mark.parametrize(
    "environ, problem",
    [
        ({"AL_STRATEGY": "entrpy"}, "setting AL_STRATEGY: must be one of"),
        ({"AL_AGGREGATION": "median"}, "setting AL_AGGREGATION: must be one of"),
        ({"MODEL_DETECTOR": "yolo"}, "setting MODEL_DETECTOR: must be one of"),
        ({"EXECUTOR": "k8s"}, "setting EXECUTOR: Input should be 'local' or 'ray'"),
        ({"MODEL_PRETRAINED": "imagenet"}, "setting MODEL_PRETRAINED"),
        ({"TRAIN_BOX_LOSS": "l1"}, "setting TRAIN_BOX_LOSS: must be one of"),
        ({"TRAIN_EMPHASIS": "-1"}, "setting TRAIN_EMPHASIS: must be >= 0"),
        ({"CERTAIN_PRECISION_TARGET": "2"}, "setting CERTAIN_PRECISION_TARGET"),
        ({"WRITE_TASK_DATA": "maybe"}, "setting WRITE_TASK_DATA: Input should be a valid boolean"),
        ({"LOG_LEVEL": "loud"}, "setting LOG_LEVEL"),
        ({"COST_DRAW_SECONDS": "-3"}, "seconds"),
    ],
)
def test_a_bad_value_is_refused_at_start_up_with_its_name(environ, problem):
    with pytest.raises(ValueError, match=problem):
        Settings.load(environ)


def test_settings_read_the_given_environment_only(monkeypatch):
    monkeypatch.setenv("PORT", "9555")
    assert Settings.load({}).port == 9090 and Settings.load().port == 9555
    assert Settings().port == 9090  # plain construction: defaults and arguments, no environment
    assert Settings.load({"LOG_LEVEL": "debug", "WRITE_TASK_DATA": "on"}).log_level == "DEBUG"
    with pytest.raises(Exception, match="frozen"):
        Settings().port = 1


def test_readme_table_lists_every_setting_with_its_default():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", readme, flags=re.M))
    for name, field in Settings.model_fields.items():
        assert name.upper() in rows, f"{name.upper()} missing from the README table"
        assert rows[name.upper()] == str(field.default), name


@pytest.mark.parametrize("raw, expected", [("4.1795262362", 4), (12, 12), ("7", 7), (None, None), ("", None)])
def test_project_id_is_the_part_before_the_dot(raw, expected):
    assert parse_project_id(raw) == expected


@pytest.mark.parametrize("raw", ["abc", "x.1", True, 1.5, [1]])
def test_bad_project_ids(raw):
    with pytest.raises(ValueError, match="'project' must look like"):
        parse_project_id(raw)


@pytest.mark.parametrize(
    "environ, problem",
    [
        ({"BASIC_AUTH_PASS": "secret"}, "only BASIC_AUTH_PASS is set"),
        ({"BASIC_AUTH_USER": "ls"}, "only BASIC_AUTH_USER is set"),
        ({"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": ""}, "only BASIC_AUTH_USER is set"),
        ({"HOST": "0.0.0.0"}, "not loopback and basic auth is off"),
        ({"HOST": "192.168.1.4"}, "not loopback and basic auth is off"),
        ({"HOST": "backend.example"}, "not loopback and basic auth is off"),
    ],
)
def test_never_open_by_accident(environ, problem):
    with pytest.raises(ValueError, match=problem):
        Settings.load(environ)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_needs_no_auth(host):
    assert not Settings.load({"HOST": host}).open_without_auth


def test_open_on_purpose_is_allowed_and_logged(tmp_path, untrained_detector, caplog):
    settings = Settings.load({"HOST": "0.0.0.0", "ALLOW_UNAUTHENTICATED": "true", "DATA_DIR": str(tmp_path)})
    assert settings.open_without_auth
    with_auth = Settings.load({"HOST": "0.0.0.0", "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "x"})
    assert not with_auth.open_without_auth
    from backend.app import create_app

    with caplog.at_level("WARNING"):
        create_app(settings, detector=untrained_detector)
    assert any("without authentication" in record.getMessage() for record in caplog.records)


def test_scorers_take_the_al_settings_their_signature_names():
    settings = Settings.load({"AL_CLASSES": "all", "AL_BOXES": "3"})
    assert scorer_params("entropy", settings, "max") == {"aggregation": "max", "boxes": 3, "classes": "all"}
    assert scorer_params("tta_disagreement", settings, "mean") == {"aggregation": "mean", "boxes": 3}
    assert scorer_params("random", settings, "mean") == {}
    assert scorer_params("uncertainty_diversity", settings, "mean") == {"aggregation": "mean", "boxes": 3}
    # Information density weighs entropy's score, which takes the settings; TypiClust has no default inner scorer.
    inner = {"aggregation": "max", "boxes": 3, "classes": "all"}
    assert scorer_params("information_density", settings, "max") == {"within_params": inner}
    assert scorer_params("typiclust", settings, "max") == {}
    create_scorer("information_density", **scorer_params("information_density", settings, "max"))
    create_scorer("tta_disagreement", **scorer_params("tta_disagreement", settings, "mean"))  # takes them all
