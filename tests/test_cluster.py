"""The cluster path, for real on loopback: a two-node Ray cluster (`ray start`), an S3-compatible
server (moto), `ray job submit --working-dir .` of the smoke sweep with s3:// storage, and the
aggregation read back from the bucket. Plus cluster.yaml against Ray's own autoscaler schema and
the KubeRay RayJob manifest against the fields KubeRay requires.

Loopback only: Ray rewrites a node address of exactly 127.0.0.1 into the machine's routable one
(it assumes nodes on several hosts), so the two nodes use 127.0.0.2 and 127.0.0.3, which are
loopback too (127.0.0.0/8); every server started here listens there or on 127.0.0.1, and every
connection goes there.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def ray_version_pin() -> str:
    pin = re.search(r'"ray\[[^\]]*\]==([\d.]+)\.\*"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins ray to one release line"
    return pin.group(1)


# ---------------------------------------------------------------- cluster.yaml and the RayJob

def test_cluster_yaml_is_valid_for_the_ray_autoscaler():
    import jsonschema
    import ray
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)

    image = config["docker"]["image"]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray.__version__)}-gpu", image), image
    assert ray.__version__.startswith(ray_version_pin())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["GPU"] == 0          # the Tune driver never takes a GPU from a trial
    gpu_types = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu_types and all(t["min_workers"] == 0 and t["resources"]["GPU"] >= 1 for t in gpu_types)
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert any("RAY_AUTH_MODE=token" in opt for opt in config["docker"]["run_options"])
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())
    assert any("pip install" in c and "noisesink" in c for c in config["setup_commands"])


def test_no_credentials_in_cluster_files():
    for path in ("cluster.yaml", "k8s/rayjob.yaml", "k8s/Dockerfile"):
        text = (ROOT / path).read_text()
        assert not re.search(r"aws_(access_key_id|secret_access_key)|AKIA[0-9A-Z]{16}|private_key", text, re.I), path


def test_rayjob_manifest_has_what_kuberay_requires():
    import ray
    job = yaml.safe_load((ROOT / "k8s" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])  # DNS-1123
    spec = job["spec"]
    entry = spec["entrypoint"].split()
    assert entry[:4] == ["python", "-m", "study", "sweep"] and (ROOT / entry[4]).is_file()
    assert "--storage" in entry
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["rayStartParams"].get("num-gpus") == "0"
    containers = [head["template"]["spec"]["containers"][0]]
    assert {p["containerPort"] for p in containers[0]["ports"]} >= {6379, 8265}
    groups = cluster["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["groupName"] and "rayStartParams" in g
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        c = g["template"]["spec"]["containers"][0]
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        containers.append(c)
    for c in containers:
        assert c["name"] and c["image"].endswith(f":{ray.__version__}-gpu")
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    assert "FROM rayproject/ray:" + ray.__version__ + "-gpu" in (ROOT / "k8s" / "Dockerfile").read_text()


# ---------------------------------------------------------------- the real thing, on loopback

def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port}")


@pytest.fixture
def loopback_cluster(tiny_data, tmp_path):
    """A 2-node Ray cluster and a moto S3 server on loopback; everything stopped afterwards."""
    bin_dir = Path(sys.executable).parent
    s3_port, gcs_port, dash_port = free_port("127.0.0.1"), free_port(HEAD_IP), free_port(HEAD_IP)
    env = {**os.environ,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
           "NOISESINK_DATA": str(tiny_data), "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    # one temp dir per node (short: Ray's socket paths live there). Two nodes sharing one would
    # also share runtime_resources/, and one node's cleanup would delete the other's working_dir.
    temp_dirs = [tempfile.mkdtemp(prefix="rt", dir="/tmp") for _ in range(2)]
    ray_bin = str(bin_dir / "ray")
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", s3_port)
        import boto3
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket="results")
        common = ["--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
        subprocess.run([ray_bin, "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={gcs_port}",
                        f"--dashboard-host={HEAD_IP}", f"--dashboard-port={dash_port}",
                        f"--ray-client-server-port={free_port(HEAD_IP)}", f"--temp-dir={temp_dirs[0]}", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([ray_bin, "start", f"--address={HEAD_IP}:{gcs_port}", f"--node-ip-address={WORKER_IP}",
                        '--resources={"second_node": 1}', f"--temp-dir={temp_dirs[1]}", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        yield {"env": env, "dashboard": f"http://{HEAD_IP}:{dash_port}", "ray": ray_bin}
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        moto.kill()
        moto.wait()
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_job_submit_to_a_two_node_cluster_with_s3_storage(loopback_cluster, tmp_path):
    c = loopback_cluster
    env, ray_bin = c["env"], c["ray"]
    sets = {"trial.train_subset": 100, "trial.test_subset": 40, "trial.epochs": 1, "trial.batch_size": 50,
            "trial.n_noise": 40, "trial.n_trajectory": 20, "trial.data_verify": "shapes",
            "trial.sample_per_class": 20, "trial.n_frequency": 40}
    entry = ["python", "-m", "study", "sweep", "sweeps/smoke.yaml", "--storage", "s3://results/studies"]
    entry += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    submitted = subprocess.run([ray_bin, "job", "submit", "--address", c["dashboard"], "--working-dir", str(ROOT),
                                "--no-wait", "--", *entry], env=env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)

    status, deadline = "", time.time() + 300
    while time.time() < deadline:
        res = subprocess.run([ray_bin, "job", "status", "--address", c["dashboard"], job_id], env=env,
                             capture_output=True, text=True, timeout=60)
        out = res.stdout + res.stderr  # the CLI logs the status line to stderr
        ended = re.search(r"\b(succeeded|failed|stopped)\b", out, re.I)  # "Job '...' succeeded"
        status = ended.group(1).upper() if ended else ""
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    if status != "SUCCEEDED":
        logs = subprocess.run([ray_bin, "job", "logs", "--address", c["dashboard"], job_id], env=env,
                              capture_output=True, text=True, timeout=60).stdout
        pytest.fail(f"job {job_id} ended {status or 'never'}; its logs:\n{logs[-6000:]}")

    # the aggregation, from this process, straight from the bucket
    report = tmp_path / "report"
    res = subprocess.run([sys.executable, "-m", "analysis", "s3://results/studies/smoke", "--out", str(report)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = pd.read_csv(report / "runs.csv")
    assert len(runs) == 4 and (runs["status"] == "completed").all()
    assert pd.read_csv(report / "problems.csv").empty
    assert len(pd.read_csv(report / "absorption.csv")) == (2 * 10 + 2 * 2) * 10  # runs x classes x noises
    # the trials ran on both nodes (Tune records each trial's node in its result.json)
    import pyarrow.fs as pafs
    fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                           region="us-east-1")
    base = "results/studies/smoke"
    node_ips = set()
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if info.type == pafs.FileType.Directory and info.base_name not in ("report",):
            try:
                with fs.open_input_stream(f"{info.path}/result.json") as f:
                    node_ips |= {json.loads(line)["node_ip"] for line in f.read().decode().splitlines() if line}
            except FileNotFoundError:
                pass
    assert node_ips == {HEAD_IP, WORKER_IP}, node_ips
    # and the sweep's own report went to the bucket too
    with fs.open_input_stream(f"{base}/report/report.md") as f:
        assert b"# noisesink report: smoke" in f.read()
