"""The Ray path on a local cluster started by the test (a head and two CPU worker nodes on this
machine, Ray's own ``cluster_utils.Cluster``, stopped by its process handles): pool scoring as a
Ray Data job gives the in-process scores, a worker node killed mid-job costs a retry and not the
job, and Ray Train's TorchTrainer trains the detector with DDP on two workers."""

import math

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is the optional scale-out extra (requirements-scale.txt)")

from al_core.datasets import SHAPE_CLASSES, generate_shapes  # noqa: E402
from al_core.detectors import Detector  # noqa: E402
from al_core.pool import score_pool  # noqa: E402
from al_core.ray_scoring import RayOptions, score_pool_ray  # noqa: E402
from al_core.ray_training import train_detector_ray  # noqa: E402
from al_core.scoring import ScoringContext  # noqa: E402
from al_core.training import TrainConfig  # noqa: E402

from ..label_studio_server import label_studio_server  # noqa: E402, F401


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # Ray's own test cluster: every node a process group of this machine (it binds the machine's
    # own interface address; asking it for 127.0.0.1 leaves the driver unable to find the GCS).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def test_ray_scores_equal_in_process_scores_and_survive_a_lost_worker(cluster, trained_checkpoint, tmp_path):
    ray_cluster, workers = cluster
    paths = [s.path for s in generate_shapes(tmp_path / "pool", 96, seed=5)]
    detector = Detector.load(trained_checkpoint, device="cpu")
    expected = score_pool(detector, paths, "entropy", {"aggregation": "max"}, batch_size=4)
    killed = []

    def kill_a_worker_once(done: int) -> None:
        if done >= 8 and not killed:  # the job is streaming: take a node with a replica away
            ray_cluster.remove_node(workers[0], allow_graceful=False)
            killed.append(done)

    got = score_pool_ray(
        str(trained_checkpoint),
        paths,
        "entropy",
        {"aggregation": "max"},
        batch_size=4,
        options=RayOptions(replicas=2, cpus_per_replica=1),
        on_progress=kill_a_worker_once,
    )
    assert killed and killed[0] < len(paths)
    assert got.keys == expected.keys
    for want, have in zip(expected.scores, got.scores):
        assert have.value == pytest.approx(want.value, abs=1e-5)
        assert have.normalized == pytest.approx(want.normalized, abs=1e-5)
    assert [i.key for i in got.select(10).images] == [i.key for i in expected.select(10).images]
    workers[0] = ray_cluster.add_node(num_cpus=1)  # back to two workers


def test_class_balanced_scores_on_ray_use_the_class_quality(cluster, trained_checkpoint, shapes, tmp_path):
    """The Ray path computes PPAL's class quality from the labeled images, as the in-process one."""
    paths = [s.path for s in generate_shapes(tmp_path / "pool", 16, seed=6)]
    detector = Detector.load(trained_checkpoint, device="cpu")
    params = {"aggregation": "class_balanced"}
    expected = score_pool(detector, paths, "entropy", params, ScoringContext(labeled=shapes["test"]), batch_size=4)
    context = ScoringContext(labeled=shapes["test"])
    got = score_pool_ray(str(trained_checkpoint), paths, "entropy", params, context, 4, RayOptions(replicas=1))
    assert context.class_quality is not None and float(context.class_quality.max()) > 0
    for want, have in zip(expected.scores, got.scores, strict=True):
        assert have.value == pytest.approx(want.value, abs=1e-5)


def test_set_level_scorers_stay_in_process(cluster, trained_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="set-level"):
        score_pool_ray(str(trained_checkpoint), [str(tmp_path / "x.png")], "coreset")


def test_torch_trainer_trains_with_ddp_on_two_workers(cluster, tmp_path):
    samples = generate_shapes(tmp_path / "train", 16, seed=7)
    torch.manual_seed(0)
    detector = Detector.create("cpu_preset", SHAPE_CLASSES, "backbone", device="cpu")
    before = {k: v.clone() for k, v in detector.model.state_dict().items()}
    result = train_detector_ray(detector, samples, TrainConfig(epochs=2, batch_size=4), workers=2, work_dir=tmp_path)
    # 16 images, 2 workers, batches of 4: each worker takes 2 steps per epoch.
    assert result.epochs == 2 and result.iterations == 4 and math.isfinite(result.final_loss)
    assert detector.version.trained
    changed = [
        k for k, v in detector.model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])
    ]
    assert changed, "the trained weights came back to the driver"


def test_a_backend_with_executor_ray_runs_its_cycle_on_the_cluster(
    cluster,
    label_studio_server,  # noqa: F811
    image_server,
    shapes,
    tmp_path,
):
    """EXECUTOR=ray and RAY_ADDRESS: the backend trains with two DDP workers and scores the pool
    on the cluster's replicas, then pushes predictions as the in-process cycle does."""
    from label_studio_sdk import LabelStudio

    from ..label_studio_server import BACKEND_PASSWORD, BACKEND_USER, free_port, start_backend
    from .test_label_studio_cycle import CONFIG, truth_regions, wait_for

    ray_cluster, _ = cluster
    samples = generate_shapes(shapes["root"] / "raypool", 12, seed=13)
    ls = LabelStudio(base_url=label_studio_server.url, api_key=label_studio_server.token)
    project = ls.projects.create(title="Cycle on Ray", label_config=CONFIG)
    urls = [f"{image_server.url}/raypool/{s.path.split('/')[-1]}" for s in samples]
    ids = ls.projects.import_tasks(id=project.id, request=[{"image": u} for u in urls], return_task_ids=True).task_ids
    for task_id, sample in list(zip(ids, samples))[:8]:
        ls.annotations.create(id=task_id, result=truth_regions(sample))
    env = {
        "PORT": str(free_port()),
        "DATA_DIR": str(tmp_path),
        "LABEL_STUDIO_URL": label_studio_server.url,
        "LABEL_STUDIO_API_KEY": label_studio_server.token,
        "BASIC_AUTH_USER": BACKEND_USER,
        "BASIC_AUTH_PASS": BACKEND_PASSWORD,
        "FETCH_ALLOW_HOSTS": f"127.0.0.1:{image_server.port}",
        "TRAIN_MIN_NEW_ANNOTATIONS": "1000",
        "TRAIN_EPOCHS": "2",
        "TRAIN_MIN_STEPS": "0",
        "EXECUTOR": "ray",
        "RAY_ADDRESS": ray_cluster.address,
        "TRAIN_WORKERS": "2",
        "RAY_REPLICAS": "2",
        "WRITE_TASK_DATA": "true",  # the per-task option, tested here
    }
    backend = start_backend(env, tmp_path / "backend.log")
    try:
        job = backend.post("/train", json={"project": project.id}).json()
        done = lambda: backend.get(f"/jobs/{job['job_id']}").json()["state"] in ("done", "failed")  # noqa: E731
        wait_for(done, 600, "the cycle on Ray")
        final = backend.get(f"/jobs/{job['job_id']}").json()
        assert final["state"] == "done", final
    finally:
        backend.stop()
    log = (tmp_path / "backend.log").read_text()
    assert "training on Ray with 2 DDP workers" in log and "scoring 4 images on Ray (2 replicas)" in log
    version = f"p{project.id}-v1"
    unlabeled = [t for t in ls.tasks.list(project=project.id, fields="all") if not t.annotations]
    assert len(unlabeled) == 4
    for task in unlabeled:
        assert [p.model_version for p in task.predictions] == [version] and "priority" in task.data
