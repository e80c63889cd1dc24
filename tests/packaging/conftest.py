"""Shared fixtures of the packaging tests: paths, tools, and template.yaml parsed with
CloudFormation's short-form tags (!Ref, !Sub, ...) kept as {"Fn::X": ...} dicts."""

import os
import pathlib
import shutil

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
DASHBOARD = ROOT / "dashboards" / "cloudwatch-dashboard.json"
SAM_VENV = pathlib.Path(os.environ.get("SAM_VENV", ROOT / ".venv-sam"))
ARCHES = ("arm64", "x86_64")


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else ("Fn::" + suffix if suffix != "Condition" else "Condition")
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="session")
def template():
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def tool(name):
    """A tool from the SAM venv (scripts/package/lib.sh ensure_sam), else from PATH."""
    candidate = SAM_VENV / "bin" / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found in {SAM_VENV}/bin or on PATH: run `make packaging-deps`")
    return found


def sam_env():
    """sam runs offline: no telemetry (it would phone home), a region and dummy credentials
    for the commands that insist on them; nothing here talks to AWS."""
    env = dict(os.environ)
    env.update(
        SAM_CLI_TELEMETRY="0",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    env.pop("AWS_PROFILE", None)
    return env
