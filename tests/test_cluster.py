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
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, write_image_tree
from study.noise import NOISE_FAMILIES

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def ray_version_pin() -> str:
    pin = re.search(r'"ray\[[^\]]*\]==([\d.]+)\.\*"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins ray to one release line"
    return pin.group(1)


DOCKERFILE = (ROOT / "k8s" / "Dockerfile").read_text()
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())
RAYJOB = yaml.safe_load((ROOT / "k8s" / "rayjob.yaml").read_text())
IMAGE_HOME = "/home/ray/noisesink"   # where k8s/Dockerfile puts the checkout


def built_image() -> str:
    """The image k8s/Dockerfile's header says to build (docker build -t ...)."""
    return re.search(r"docker build --platform linux/amd64 -f k8s/Dockerfile -t (\S+) \.", DOCKERFILE).group(1)


# ---------------------------------------------------------------- the image and its pins

def test_the_image_pins_ray_python_cuda_and_torch_consistently():
    import ray
    base = re.search(r"^FROM rayproject/ray:(\S+)$", DOCKERFILE, re.M).group(1)
    ray_v, py, cuda = re.fullmatch(r"([\d.]+)-py(\d+)-cu(\d+)", base).groups()
    assert ray_v == ray.__version__ and ray_v.startswith(ray_version_pin())
    # the image's Python satisfies the project's requires-python
    low = re.search(r'requires-python = ">=(\d)\.(\d+)"', (ROOT / "pyproject.toml").read_text()).groups()
    assert (int(py[0]), int(py[1:])) >= (int(low[0]), int(low[1]))
    # torch's CUDA build is the image's CUDA, in the index, the check and nowhere else
    assert f"download.pytorch.org/whl/cu{cuda}" in DOCKERFILE
    assert f"torch.version.cuda.startswith('{cuda[:-1]}.{cuda[-1]}')" in DOCKERFILE
    code = "\n".join(ln for ln in DOCKERFILE.splitlines() if not ln.lstrip().startswith("#"))
    assert set(re.findall(r"\bcu(\d{3})\b", code)) == {cuda}
    # torch and torchvision: the versions CI installs (.ci/install), pinned exactly
    ci = re.search(r"NOISESINK_TORCH:-([^}]*)\}", (ROOT / ".ci" / "install").read_text()).group(1).split()
    pins = re.search(r"pip install --no-cache-dir (torch==\S+ torchvision==\S+)", DOCKERFILE).group(1).split()
    assert pins == ci, (pins, ci)
    # every node runs the image the Dockerfile builds, tagged with the same Ray/Python/CUDA
    assert built_image().endswith(":" + base)
    images = {CLUSTER["docker"]["image"]}
    spec = RAYJOB["spec"]
    pods = [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"], spec]
    for pod in pods:
        template = pod.get("template") or pod["submitterPodTemplate"]
        images |= {c["image"] for c in template["spec"]["containers"]}
    assert images == {built_image()}
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__


def test_the_image_installs_every_tracker_run_callbacks_may_name():
    """run.callbacks is checked against the driver's installed packages; on a cluster the driver runs
    in the image, so the image carries every tracker's extra (and the autoscaler's boto3)."""
    from study.tracking import TRACKERS
    extras = re.search(r'pip install --no-cache-dir "/home/ray/noisesink\[([\w,]+)\]"', DOCKERFILE).group(1).split(",")
    assert set(extras) == {"cluster"} | {t.extra for t in TRACKERS.values()}


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for a context path: the last matching pattern wins (`!` re-includes); a
    pattern matching a folder excludes what is under it."""
    from fnmatch import fnmatchcase
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        variants = {pat, pat.replace("**/", "")}
        if any(fnmatchcase(p, v) for p in prefixes for v in variants):
            excluded = not neg
    return excluded


def test_dockerignore_keeps_environments_results_git_and_data_out_of_the_image():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "results/smoke/trial.json", "results-cluster/x",
                 "data/cifar10-jpg.tar", "cifar10-jpg.tar", "study/__pycache__/x.pyc",
                 "noisesink.egg-info/PKG-INFO", "ray_results/exp/x"):
        assert dockerignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "LICENSE", "study/trial.py", "analysis/load.py",
                 "sweeps/seeds.yaml", "configs/resnet18.yaml"):
        assert (ROOT / path).exists() and not dockerignored(path, patterns), path


# ---------------------------------------------------------------- the cluster launcher (AWS)

def test_cluster_yaml_passes_rays_own_config_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(CLUSTER))       # Ray 2.60's ray-schema.json and its checks

    types = CLUSTER["available_node_types"]
    head = types[CLUSTER["head_node_type"]]
    assert head["resources"]["GPU"] == 0          # the Tune driver never takes a GPU from a trial
    gpu_types = [t for name, t in types.items() if name != CLUSTER["head_node_type"]]
    assert gpu_types and all(t["min_workers"] == 0 and t["resources"]["GPU"] >= 1 for t in gpu_types)
    assert "~/.ray/auth_token" in CLUSTER["file_mounts"]
    assert any("RAY_AUTH_MODE=token" in opt for opt in CLUSTER["docker"]["run_options"])
    # the image carries everything: nothing is installed when a node starts
    # the image carries everything: each setup list is stated and empty (a key left out gets Ray's
    # AWS defaults, which pip-install Ray and boto3 on every node)
    assert all(CLUSTER.get(key, None) == [] for key in ("setup_commands", "head_setup_commands",
                                                        "worker_setup_commands"))
    # pull_before_run pulls on every host before Ray starts: the registry login comes first
    registry = CLUSTER["docker"]["image"].split("/")[0]
    assert CLUSTER["docker"]["pull_before_run"]
    assert any("docker login" in c and c.split("#")[0].rstrip().endswith(registry)
               for c in CLUSTER["initialization_commands"])


def iam_policy(name: str) -> dict:
    return json.loads((ROOT / name).read_text())


def allowed_actions(policy: dict) -> set[str]:
    out = set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        out |= {st["Action"]} if isinstance(st["Action"], str) else set(st["Action"])
    return out


def test_the_head_policy_allows_every_ec2_call_of_rays_aws_node_provider():
    """Read Ray's AWS node provider (what the autoscaler on the head runs) and turn each boto3
    call into its IAM action: the head's policy must allow all of them, or workers never start."""
    import ray.autoscaler._private.aws.node_provider as provider
    src = Path(provider.__file__).read_text()
    calls = set(re.findall(r"\.meta\.client\.([a-z_]+)\(", src))
    calls |= set(re.findall(r"\bec2\.(describe_[a-z_]+)\(", src))
    calls |= set(re.findall(r"(terminate_instances|stop_instances|start_instances)\b", src))
    resource_calls = {"create_instances": "RunInstances", "instances.filter": "DescribeInstances",
                      "node.terminate()": "TerminateInstances", "node.stop()": "StopInstances"}
    assert all(c in src for c in resource_calls), "Ray's node provider changed: look again"
    needed = {"ec2:" + "".join(w.capitalize() for w in c.split("_")) for c in calls}
    needed |= {"ec2:" + a for a in resource_calls.values()}
    head = allowed_actions(iam_policy("cluster-iam-head.json"))
    assert needed <= head, needed - head
    assert "iam:PassRole" in head      # workers launch with their own instance profile
    # actions on existing instances are limited to this cluster's nodes, by the tag Ray sets
    from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME
    scoped = [st for st in iam_policy("cluster-iam-head.json")["Statement"]
              if "ec2:TerminateInstances" in st["Action"]]
    assert scoped[0]["Condition"]["StringEquals"] == {f"ec2:ResourceTag/{TAG_RAY_CLUSTER_NAME}":
                                                      CLUSTER["cluster_name"]}


def test_the_passed_role_and_the_bucket_are_the_ones_the_cluster_uses():
    head = iam_policy("cluster-iam-head.json")
    passed = [st["Resource"] for st in head["Statement"] if st["Action"] == "iam:PassRole"]
    types = CLUSTER["available_node_types"]
    worker_profiles = {t["node_config"]["IamInstanceProfile"]["Arn"] for name, t in types.items()
                       if name != CLUSTER["head_node_type"]}
    # convention (README): each instance profile holds the role of the same name
    assert {a.replace(":instance-profile/", ":role/") for a in worker_profiles} == set(passed)
    nodes = iam_policy("cluster-iam-nodes.json")
    buckets = {re.match(r"arn:aws:s3:::([^/]+)", st["Resource"]).group(1)
               for st in nodes["Statement"] if st["Resource"].startswith("arn:aws:s3")}
    storage = re.search(r"--storage s3://([^/\s]+)", RAYJOB["spec"]["entrypoint"]).group(1)
    assert buckets == {storage}
    assert {"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket"} <= allowed_actions(nodes)


TRUST_EC2 = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


def test_the_launcher_bootstraps_launches_and_terminates_a_worker_on_a_mock_aws(tmp_path, monkeypatch):
    """`ray up`'s AWS bootstrap and the autoscaler's node provider, both Ray's own code, run
    against moto's EC2 and IAM: the policies are valid IAM documents, the instance profiles and
    node configs are valid EC2 requests, and a spot GPU worker is launched with its own profile,
    tagged for this cluster (the tag the head's policy is scoped to) and terminated."""
    boto3 = pytest.importorskip("boto3")
    from moto import mock_aws
    from ray.autoscaler._private.aws import utils as aws_utils
    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.util import prepare_config
    from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

    monkeypatch.setenv("HOME", str(tmp_path))      # bootstrap writes the ssh key to ~/.ssh
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    aws_utils.resource_cache.cache_clear()
    region = CLUSTER["provider"]["region"]
    profiles = {re.search(r"instance-profile/(.+)$", t["node_config"]["IamInstanceProfile"]["Arn"]).group(1)
                for t in CLUSTER["available_node_types"].values()}
    try:
        with mock_aws():
            iam = boto3.client("iam", region_name=region)
            for name in ("cluster-iam-head.json", "cluster-iam-nodes.json"):
                iam.create_policy(PolicyName=name, PolicyDocument=(ROOT / name).read_text())
            for name in profiles:
                iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST_EC2)
                iam.create_instance_profile(InstanceProfileName=name)
                iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
            config = prepare_config(CLUSTER)
            ami = boto3.client("ec2", region_name=region).describe_images(Owners=["amazon"])["Images"][0]
            for t in config["available_node_types"].values():
                t["node_config"]["ImageId"] = ami["ImageId"]    # the AMI is yours to set (CHANGE)
            config = bootstrap_aws(config)
            provider = AWSNodeProvider(config["provider"], config["cluster_name"])
            worker = next(n for n in config["available_node_types"] if n != config["head_node_type"])
            node_config = config["available_node_types"][worker]["node_config"]
            provider.create_node(node_config, {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: worker}, 1)
            (node,) = provider.non_terminated_nodes({})
            assert provider.node_tags(node)[TAG_RAY_CLUSTER_NAME] == CLUSTER["cluster_name"]
            described = boto3.client("ec2", region_name=region).describe_instances(InstanceIds=[node])
            instance = described["Reservations"][0]["Instances"][0]
            assert instance["InstanceType"] == node_config["InstanceType"]
            assert instance["IamInstanceProfile"]["Arn"] == node_config["IamInstanceProfile"]["Arn"]
            assert instance.get("InstanceLifecycle") == "spot"
            provider.terminate_node(node)
            assert provider.non_terminated_nodes({}) == []
    finally:
        aws_utils.resource_cache.cache_clear()


def test_no_credentials_in_cluster_files():
    for path in ("cluster.yaml", "k8s/rayjob.yaml", "k8s/serviceaccount.yaml", "k8s/Dockerfile",
                 "cluster-iam-head.json", "cluster-iam-nodes.json"):
        text = (ROOT / path).read_text()
        assert not re.search(r"aws_(access_key_id|secret_access_key)|AKIA[0-9A-Z]{16}|private_key", text, re.I), path


# ---------------------------------------------------------------- KubeRay

KUBERAY_MIN = (1, 6, 0)   # the first KubeRay whose RayCluster has authOptions.secretName


def test_the_service_account_the_pods_run_as_is_shipped_and_applied_first():
    """KubeRay raises AutoscalerServiceAccountNotFound (the head is never created) when the head
    names a service account that does not exist: k8s/serviceaccount.yaml is that account, bound to
    the bucket by its annotation, and every instruction applies it before the RayJob."""
    account = yaml.safe_load((ROOT / "k8s" / "serviceaccount.yaml").read_text())
    assert account["apiVersion"] == "v1" and account["kind"] == "ServiceAccount"
    spec = RAYJOB["spec"]["rayClusterSpec"]
    named = {spec["headGroupSpec"]["template"]["spec"]["serviceAccountName"]}
    named |= {g["template"]["spec"]["serviceAccountName"] for g in spec["workerGroupSpecs"]}
    assert named == {account["metadata"]["name"]}
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+",
                        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])
    for doc in ((ROOT / "README.md").read_text(), (ROOT / "k8s" / "rayjob.yaml").read_text()):
        assert doc.index("kubectl apply -f k8s/serviceaccount.yaml") < doc.index("kubectl apply -f k8s/rayjob.yaml")


def test_the_readme_walks_a_new_account_through_every_prerequisite():
    """What a first run needs before `ray up` or `kubectl apply`, in README's order: the bucket, the ECR
    repository, the login, an x86-64 build of the very image the nodes run, the push; on Kubernetes
    the KubeRay operator pinned at or above KUBERAY_MIN and NVIDIA's device plugin; a wait on the
    RayJob's status before following its logs (the submitter's Job is NotFound until the Ray cluster
    is up); one placeholder per name in every file."""
    readme = (ROOT / "README.md").read_text()
    steps = ["aws s3 mb s3://CHANGE-bucket", "aws ecr create-repository --repository-name noisesink",
             "aws ecr get-login-password",
             f"docker build --platform linux/amd64 -f k8s/Dockerfile -t {built_image()} .",
             f"docker push {built_image()}"]
    assert (all(s in readme for s in steps)
            and [readme.index(s) for s in steps] == sorted(readme.index(s) for s in steps))
    assert built_image().split("/")[0] == "CHANGE-registry"
    pinned = re.search(r"helm install kuberay-operator kuberay/kuberay-operator --version (\d+)\.(\d+)\.(\d+)", readme)
    assert pinned and tuple(map(int, pinned.groups())) >= KUBERAY_MIN
    assert "nvdp/nvidia-device-plugin" in readme
    name = RAYJOB["metadata"]["name"]
    wait = f"kubectl wait rayjob/{name} --for=jsonpath='{{.status.jobDeploymentStatus}}'=Running"
    assert wait in readme and readme.index(wait) < readme.index(f"kubectl logs -f job/{name}")
    assert "&& kubectl logs" not in readme
    files = [readme] + [(ROOT / f).read_text() for f in ("cluster.yaml", "k8s/rayjob.yaml", "k8s/Dockerfile",
                                                         "k8s/serviceaccount.yaml", "cluster-iam-head.json",
                                                         "cluster-iam-nodes.json")]
    for text in files:
        assert "my-bucket" not in text and "cifar10.tar" not in text
        assert set(re.findall(r"s3://([\w-][\w.-]*)", text)) <= {"CHANGE-bucket"}


def test_rayjob_manifest_has_what_kuberay_requires():
    import ray
    header = (ROOT / "k8s" / "rayjob.yaml").read_text().split("apiVersion:")[0]
    stated = re.search(r"KubeRay >= v(\d+)\.(\d+)\.(\d+)", header)
    assert stated and tuple(map(int, stated.groups())) >= KUBERAY_MIN
    job = RAYJOB
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    # the operator's ValidateRayJobMetadata: a DNS-1035 label of at most 53 - 6 characters
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    assert len(job["metadata"]["name"]) <= 47
    spec = job["spec"]
    entry = spec["entrypoint"].split()
    assert entry[:2] == ["noisesink", "sweep"] and entry[2].startswith(IMAGE_HOME + "/")
    assert (ROOT / entry[2].removeprefix(IMAGE_HOME + "/")).is_file()
    assert "--storage" in entry and entry[entry.index("--storage") + 1].startswith("s3://")
    assert "--resume" in entry and spec["backoffLimit"] >= 1   # a retry continues the study
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    # token auth through the operator (KubeRay's validation: mode token needs Ray >= 2.52)
    assert cluster["authOptions"]["mode"] == "token"
    assert tuple(map(int, cluster["rayVersion"].split(".")[:2])) >= (2, 52)
    secret = cluster["authOptions"]["secretName"]
    create = f"kubectl create secret generic {secret} --from-literal=auth_token="
    assert create in header and create in (ROOT / "README.md").read_text()
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["rayStartParams"].get("num-gpus") == "0"
    containers = [head["template"]["spec"]["containers"][0]]
    assert {p["containerPort"] for p in containers[0]["ports"]} >= {6379, 8265}
    groups = cluster["workerGroupSpecs"]
    assert groups and cluster["enableInTreeAutoscaling"] is True
    for g in groups:
        assert g["groupName"] and "rayStartParams" in g
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        c = g["template"]["spec"]["containers"][0]
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        containers.append(c)
    containers += spec["submitterPodTemplate"]["spec"]["containers"]
    for c in containers:
        # set by hand, these would shadow what the operator injects and miss the autoscaler
        names = {e["name"] for e in c.get("env") or []}
        assert c["name"] and not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, c["name"]


def crd_schema(crd: dict) -> dict:
    """The CRD's openAPIV3Schema as a JSON schema that, like `kubectl apply --validate=strict`,
    refuses unknown fields (the API server would drop them without a word)."""
    def strict(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)
        return node
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return strict(version["schema"]["openAPIV3Schema"])


def test_rayjob_against_kuberays_crd():
    """KubeRay's own CRD (ray-operator/config/crd/bases/ray.io_rayjobs.yaml of a KubeRay >= 1.6
    release) is not on PyPI: point NOISESINK_KUBERAY_CRD at a copy to run this check."""
    path = os.environ.get("NOISESINK_KUBERAY_CRD")
    if not path:
        pytest.skip("NOISESINK_KUBERAY_CRD not set (a copy of KubeRay's ray.io_rayjobs.yaml)")
    import jsonschema
    schema = crd_schema(yaml.safe_load(Path(path).read_text()))
    jsonschema.validate(RAYJOB, schema)
    broken = json.loads(json.dumps(RAYJOB))
    broken["spec"]["rayClusterSpec"]["authOption"] = broken["spec"]["rayClusterSpec"].pop("authOptions")
    with pytest.raises(jsonschema.ValidationError):   # a misspelt field is caught, not dropped
        jsonschema.validate(broken, schema)


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


def kill_marked(marker: tuple[str, str]) -> None:
    """SIGKILL every process whose environment holds `marker` (NAME, VALUE), until none is left."""
    needle = f"{marker[0]}={marker[1]}".encode() + b"\0"
    for _ in range(20):
        found = []
        for env_file in Path("/proc").glob("[0-9]*/environ"):
            try:
                if needle in env_file.read_bytes() + b"\0":
                    found.append(int(env_file.parent.name))
            except OSError:   # gone, or not ours to read
                continue
        found = [pid for pid in found if pid != os.getpid()]
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        time.sleep(0.5)


def can_give_a_node_its_own_disk() -> bool:
    """Whether a process here may have a private mount (a Linux mount namespace, as root)."""
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return shutil.which("unshare") is not None and probe.returncode == 0


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory):
    """A 2-node Ray cluster and a moto S3 server on loopback; everything stopped afterwards.

    The nodes are started without NOISESINK_DATA and AWS_ENDPOINT_URL (a job's driver sets them,
    the trials must get them from it). Where the system allows, the worker node runs in its own
    mount namespace with an empty tmpfs over `private_dir`: a folder the driver writes that the
    worker cannot see, like a local disk on another machine."""
    root = tmp_path_factory.mktemp("cluster")
    bin_dir = Path(sys.executable).parent
    # every process of this cluster (nodes, their workers, the jobs' drivers) inherits this marker,
    # and the teardown stops exactly those: `ray stop` would also stop the local Ray of a test that
    # pytest-xdist runs beside this module (its trials then fail with ActorUnavailableError)
    marker = ("NOISESINK_TEST_CLUSTER", secrets.token_hex(8))
    s3_port, gcs_port, dash_port = free_port("127.0.0.1"), free_port(HEAD_IP), free_port(HEAD_IP)
    endpoint = f"http://127.0.0.1:{s3_port}"
    env = {**os.environ,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",   # each node's identity
           "AWS_DEFAULT_REGION": "us-east-1", "RAY_DEDUP_LOGS": "0",
           "PYTHONWARNINGS": "default::DeprecationWarning", "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "1",
           marker[0]: marker[1]}
    for var in ("RAY_ADDRESS", "NOISESINK_DATA", "AWS_ENDPOINT_URL"):
        env.pop(var, None)
    # one temp dir per node (short: Ray's socket paths live there). Two nodes sharing one would
    # also share runtime_resources/, and one node's cleanup would delete the other's working_dir.
    temp_dirs = [tempfile.mkdtemp(prefix="rt", dir="/tmp") for _ in range(2)]
    ray_bin = str(bin_dir / "ray")
    private_dir = root / "driver-only"
    private_dir.mkdir()
    isolated = can_give_a_node_its_own_disk()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", s3_port)
        import boto3
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="results")
        s3.create_bucket(Bucket="data")
        tree = write_image_tree(root / "tree", 50, 20)  # a small image-tree tar: CIFAR-10 from a URI
        data_tar = root / "cifar10.tar"
        with tarfile.open(data_tar, "w") as tf:
            tf.add(tree / "train", arcname="train")
            tf.add(tree / "test", arcname="test")
        s3.upload_file(str(data_tar), "data", "cifar10.tar")
        common = ["--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
        # Each node's dashboard agent listens on its node address *and* on 127.0.0.1, at 52365 unless
        # told otherwise: two nodes here, or a local Ray of another test process, would take the same
        # port and the loser's agent fails to bind (the head's: "No available agent to submit job").
        agent_port = lambda: f"--dashboard-agent-listen-port={free_port('127.0.0.1')}"  # noqa: E731
        subprocess.run([ray_bin, "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={gcs_port}",
                        f"--dashboard-host={HEAD_IP}", f"--dashboard-port={dash_port}",
                        f"--ray-client-server-port={free_port(HEAD_IP)}", f"--temp-dir={temp_dirs[0]}", agent_port(),
                        *common],
                       env=env, check=True, capture_output=True, timeout=120)

        def start_worker() -> None:
            worker = [ray_bin, "start", f"--address={HEAD_IP}:{gcs_port}", f"--node-ip-address={WORKER_IP}",
                      '--resources={"second_node": 1}', f"--temp-dir={temp_dirs[1]}", agent_port(), *common]
            if isolated:
                worker = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                          f'mount -t tmpfs tmpfs "{private_dir}" && exec "$@"', "sh", *worker]
            subprocess.run(worker, env=env, check=True, capture_output=True, timeout=120)
        start_worker()
        yield {"env": env, "dashboard": f"http://{HEAD_IP}:{dash_port}", "ray": ray_bin, "endpoint": endpoint,
               "data_tar": data_tar, "private_dir": private_dir if isolated else None,
               "head_logs": Path(temp_dirs[0]) / "session_latest" / "logs", "start_worker": start_worker}
    finally:
        kill_marked(marker)
        moto.kill()
        moto.wait()
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


TINY = {"trial.train_subset": 100, "trial.test_subset": 40, "trial.epochs": 1, "trial.batch_size": 50,
        "trial.n_noise": 40, "trial.n_trajectory": 20, "trial.data_verify": "shapes",
        "trial.sample_per_class": 20, "trial.n_frequency": 40}


def submit_and_wait(c: dict, entry: list[str], timeout: float = 300,
                    runtime_env: dict | None = None) -> tuple[str, str]:
    """`ray job submit --working-dir <checkout> [--runtime-env-json ...]`; the job's final status and its logs."""
    return wait_job(c, submit_job(c, entry, runtime_env), timeout)


def submit_job(c: dict, entry: list[str], runtime_env: dict | None = None) -> str:
    """`ray job submit --no-wait`: the job's id."""
    ray_bin, env = c["ray"], c["env"]
    # A fresh head's job agent registers some seconds after `ray start` returns (longer on a loaded
    # machine: CI runs two test files at once); until then the dashboard answers 500 "No available
    # agent ... try again later" after waiting only 10 s itself. Retry that one answer, nothing else.
    agent_deadline = time.time() + 180
    while True:
        extra = ["--runtime-env-json", json.dumps(runtime_env)] if runtime_env else []
        submitted = subprocess.run([ray_bin, "job", "submit", "--address", c["dashboard"], "--working-dir",
                                    str(ROOT), *extra, "--no-wait", "--", *entry], env=env, capture_output=True,
                                   text=True, timeout=120)
        said = submitted.stdout + submitted.stderr
        if submitted.returncode == 0 or "No available agent" not in said or time.time() > agent_deadline:
            break
        time.sleep(2)
    agent_log = c["head_logs"] / "dashboard_agent.log"
    assert submitted.returncode == 0, said[-4000:] + (
        f"\n--- {agent_log} (tail):\n" + agent_log.read_text()[-3000:] if agent_log.exists() else "")
    return re.search(r"raysubmit_\w+", said).group(0)


def wait_job(c: dict, job_id: str, timeout: float = 300) -> tuple[str, str]:
    """The job's final status and its logs."""
    ray_bin, env = c["ray"], c["env"]
    status, deadline = "", time.time() + timeout
    while time.time() < deadline:
        res = subprocess.run([ray_bin, "job", "status", "--address", c["dashboard"], job_id], env=env,
                             capture_output=True, text=True, timeout=60)
        out = res.stdout + res.stderr  # the CLI logs the status line to stderr
        ended = re.search(r"\b(succeeded|failed|stopped)\b", out, re.I)  # "Job '...' succeeded"
        status = ended.group(1).upper() if ended else ""
        if status:
            break
        time.sleep(0.5)
    logs = subprocess.run([ray_bin, "job", "logs", "--address", c["dashboard"], job_id], env=env,
                          capture_output=True, text=True, timeout=60).stdout
    return status, logs


@pytest.mark.slow
def test_job_submit_to_a_two_node_cluster_with_s3_storage_and_s3_data(loopback_cluster, tmp_path):
    """The study's data and results both in (moto's) S3. Only the job knows where the data is and
    which endpoint to use, given as README says (`ray job submit --runtime-env-json`, since `ray job
    submit` forwards nothing of the laptop's environment): the nodes were started without them, so
    trials on either node find the data only through the runtime environment."""
    c = loopback_cluster
    env = c["env"]
    runtime_env = {"env_vars": {"NOISESINK_DATA": "s3://data/cifar10.tar", "AWS_ENDPOINT_URL": c["endpoint"]}}
    entry = ["python", "-m", "study", "sweep", "sweeps/smoke.yaml", "--storage", "s3://results/studies"]
    entry += [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    # 4 trials on 2 cores: ~75 s alone, 5 min under CI's load
    status, logs = submit_and_wait(c, entry, timeout=600, runtime_env=runtime_env)
    if status != "SUCCEEDED":
        pytest.fail(f"job ended {status or 'never'}; its logs:\n{logs[-6000:]}")
    assert not [ln for ln in logs.splitlines() if "DeprecationWarning" in ln]

    # the aggregation, from this process, straight from the bucket
    env = {**env, "AWS_ENDPOINT_URL": c["endpoint"]}
    report = tmp_path / "report"
    res = subprocess.run([sys.executable, "-m", "analysis", "s3://results/studies/smoke", "--out", str(report)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = pd.read_csv(report / "runs.csv")
    assert len(runs) == 4 and (runs["status"] == "completed").all()
    assert pd.read_csv(report / "problems.csv").empty
    # runs x classes x noises
    assert len(pd.read_csv(report / "absorption.csv")) == (2 * 10 + 2 * 2) * len(NOISE_FAMILIES)
    # the trials ran on both nodes (Tune records each trial's node in its result.json), and each
    # read the tar from the bucket: trial.json names the URI and the tar's own sha256
    import hashlib

    import pyarrow.fs as pafs
    fs = s3_filesystem(c)
    base = "results/studies/smoke"
    node_ips, sources = set(), set()
    tar_sha = hashlib.sha256(c["data_tar"].read_bytes()).hexdigest()
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if info.type == pafs.FileType.Directory and info.base_name != "report":
            with fs.open_input_stream(f"{info.path}/result.json") as f:
                node_ips |= {json.loads(line)["node_ip"] for line in f.read().decode().splitlines() if line}
            with fs.open_input_stream(f"{info.path}/trial.json") as f:
                data = json.loads(f.read())["data"]
            sources.add((data["source"], data["sha256"]))
    assert node_ips == {HEAD_IP, WORKER_IP}, node_ips
    assert sources == {("s3://data/cifar10.tar", tar_sha)}
    # and the sweep's own report went to the bucket too
    with fs.open_input_stream(f"{base}/report/report.md") as f:
        assert b"# noisesink report: smoke" in f.read()


@pytest.mark.slow
def test_a_local_storage_the_worker_node_cannot_see_is_refused_before_any_trial(loopback_cluster):
    c = loopback_cluster
    if c["private_dir"] is None:
        pytest.skip("no mount namespaces here (needs root and unshare): cannot give the worker node its own disk")
    storage = c["private_dir"] / "results"
    entry = ["env", f"NOISESINK_DATA={c['data_tar']}", "python", "-m", "study", "sweep", "sweeps/smoke.yaml",
             "--storage", str(storage)]
    entry += [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    status, logs = submit_and_wait(c, entry, timeout=180)
    assert status == "FAILED", logs[-3000:]
    assert f"run.storage: {storage / 'smoke'} is a folder on the driver's disk that node(s) {WORKER_IP}" in logs
    assert "a bucket URI" in logs
    # nothing ran: the study folder holds the plan and the token, no trial
    from study.tune_trial import DRIVER_TOKEN
    assert sorted(p.name for p in (storage / "smoke").iterdir()) == sorted([DRIVER_TOKEN, "study.json"])


def test_one_bucket_placeholder_everywhere():
    """A user replaces one name: every cluster file and the README spell the bucket the same way."""
    texts = {p: (ROOT / p).read_text() for p in ("README.md", "cluster.yaml", "k8s/rayjob.yaml",
                                                 "k8s/serviceaccount.yaml", "cluster-iam-nodes.json",
                                                 "cluster-iam-head.json")}
    names = {m for t in texts.values() for m in re.findall(r"(?:s3|gs)://([A-Za-z0-9._-]+)/", t)}
    assert names == {"CHANGE-bucket"}, names


def test_the_release_check_runs_offline_and_catches_a_broken_readme_command(tmp_path):
    """benchmarks/release_check.sh: here (offline) the network checks SKIP with their reason and the
    README's shell blocks PASS; a README block that does not parse FAILs it."""
    script = ROOT / "benchmarks" / "release_check.sh"
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^PASS  README.md: all \d+ bash blocks parse$", res.stdout, re.M)
    assert all(ln.split()[0] in ("PASS", "SKIP") for ln in res.stdout.splitlines()
               if ln.strip() and not ln.startswith(" "))
    copy = tmp_path / "repo"
    (copy / "benchmarks").mkdir(parents=True)
    (copy / "k8s").mkdir()
    shutil.copy(script, copy / "benchmarks")
    shutil.copy(ROOT / "k8s" / "Dockerfile", copy / "k8s")
    (copy / "README.md").write_text((ROOT / "README.md").read_text() + "\n```bash\nif then fi (\n```\n")
    broken = subprocess.run(["bash", str(copy / "benchmarks" / "release_check.sh")], capture_output=True,
                            text=True, timeout=300)
    assert broken.returncode == 1 and "FAIL  README.md: a bash block does not parse" in broken.stdout
    # a pin it cannot read fails the check (helm --version "" would install the latest chart)
    (copy / "README.md").write_text(re.sub(r"helm install kuberay-operator .*", "", (ROOT / "README.md").read_text()))
    unpinned = subprocess.run(["bash", str(copy / "benchmarks" / "release_check.sh")], capture_output=True,
                              text=True, timeout=300)
    assert unpinned.returncode == 1 and "FAIL  could not read kuberay" in unpinned.stdout


def s3_filesystem(c: dict):
    import pyarrow.fs as pafs
    return pafs.S3FileSystem(endpoint_override=c["endpoint"], access_key="testing", secret_key="testing",
                             region="us-east-1")


@pytest.mark.slow
def test_a_worker_node_killed_mid_sweep_its_trial_resumes_on_the_other_node(loopback_cluster, tmp_path):
    """The worker node's raylet killed (SIGKILL) while both trials run, one on each node, each past
    its first checkpoint: Ray declares the node dead, Tune restores the lost trial from its last
    checkpoint in the bucket on the node that is left (run.max_failures), and the study completes:
    every grid point once, nothing half-written, no problem in the aggregation. The worker node
    is started again afterwards."""
    c = loopback_cluster
    runtime_env = {"env_vars": {"NOISESINK_DATA": "s3://data/cifar10.tar", "AWS_ENDPOINT_URL": c["endpoint"]}}
    # two trials, long enough (500 images x 8 epochs) that the kill falls mid-training
    trial = {k.split(".", 1)[1]: v for k, v in TINY.items()}
    sweep = {"name": "nodekill", "trial": {**trial, "model": "small_cnn", "train_subset": 500, "epochs": 8,
                                           "noise": ["gaussian"], "lr": 0.05},
             "grid": {"seed": [0, 1]}, "resources": {"cpu": 1, "gpu": 0},
             "run": {"storage": "s3://results/studies", "checkpoint_every": 1, "max_failures": 2}}
    path = tmp_path / "nodekill.yaml"
    path.write_text(yaml.safe_dump(sweep))
    entry = ["python", "-m", "study", "sweep", str(path)]
    job = submit_job(c, entry, runtime_env)
    fs, base = s3_filesystem(c), "results/studies/nodekill"
    import pyarrow.fs as pafs

    def checkpointed() -> set[str]:
        found = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return {Path(i.path).parent.parent.name for i in found if i.base_name == "state.pt"}
    deadline = time.time() + 400
    while len(checkpointed()) < 2 and time.time() < deadline:
        time.sleep(0.3)
    assert len(checkpointed()) == 2, f"both trials should have checkpointed; {checkpointed()}"
    raylet = subprocess.run(["pgrep", "-f", f"raylet.*--node_ip_address={WORKER_IP}"], capture_output=True,
                            text=True).stdout.split()
    assert len(raylet) == 1, raylet
    os.kill(int(raylet[0]), 9)
    try:
        status, logs = wait_job(c, job, timeout=600)
    finally:   # the module's other tests keep their two nodes, whatever the order
        c["start_worker"]()
    assert status == "SUCCEEDED", logs[-6000:]
    assert "resumed from the checkpoint of epoch" in logs, logs[-6000:]
    assert "sweep nodekill: 2 of 2 trials ended, 0 failed" in logs, logs[-4000:]
    # the lost trial: its results came from both nodes; every trial completed once, checkpoints dropped
    nodes = {}
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if info.type == pafs.FileType.Directory and info.base_name != "report":
            with fs.open_input_stream(f"{info.path}/result.json") as f:
                nodes[info.base_name] = {json.loads(ln)["node_ip"] for ln in f.read().decode().splitlines() if ln}
            with fs.open_input_stream(f"{info.path}/trial.json") as f:
                assert json.loads(f.read())["status"] == "completed"
    assert len(nodes) == 2 and {HEAD_IP, WORKER_IP} in nodes.values(), nodes
    assert not checkpointed()
    env = {**c["env"], "AWS_ENDPOINT_URL": c["endpoint"]}
    report = tmp_path / "report"
    res = subprocess.run([sys.executable, "-m", "analysis", f"s3://{base}", "--out", str(report)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(pd.read_csv(report / "runs.csv")) == 2 and pd.read_csv(report / "problems.csv").empty
