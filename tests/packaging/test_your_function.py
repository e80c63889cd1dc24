"""docs/your-function.md's snippets, run: the SAM template linted by cfn-lint and translated
by the SAM translator (offline), the AWS CLI commands (and `make publish-layer-zip`) against
moto in server mode, and deploy/layer.yaml, the layer-only stack."""

import io
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
import zipfile

import boto3
import pytest
import yaml
from samtranslator.translator.transform import transform

from conftest import ROOT, CfnLoader, tool

GUIDE = ROOT / "docs" / "your-function.md"
REGION = "eu-west-1"
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:my-fn/jwt-key-AbCdEf"
LAYER_ARN = "arn:aws:lambda:eu-west-1:123456789012:layer:lambda-sidecar-arm64:1"


def snippet(name):
    """The code block right after `<!-- test: name -->` in the guide."""
    text = GUIDE.read_text()
    match = re.search(rf"<!-- test: {name} -->\n```\w+\n(.*?)```", text, re.S)
    assert match, f"no tested {name} snippet in {GUIDE}"
    return match.group(1)


class NoManagedPolicies:
    def load(self):
        return {}


def translate(template, params):
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = "s3://bucket/code.zip"
    return transform(template, params, NoManagedPolicies())


def cfn_lint(path, ignore=()):
    ignored = ["--ignore-checks", *ignore] if ignore else []
    r = subprocess.run(
        [tool("cfn-lint"), "--format", "json", "-c", "I", *ignored, "--", str(path)],
        capture_output=True, text=True, timeout=300,
    )
    assert json.loads(r.stdout or "[]") == [], r.stdout
    assert r.returncode == 0, r.stderr


def test_the_sam_snippet_lints_and_grants_exactly_the_secret(tmp_path):
    path = tmp_path / "template.yaml"
    path.write_text(snippet("sam"))
    cfn_lint(path)
    out = translate(
        yaml.load(path.read_text(), Loader=CfnLoader),
        {"SidecarLayerArn": LAYER_ARN, "JwtSecretArn": SECRET_ARN},
    )
    resources = out["Resources"]
    fn = resources["MyFunction"]["Properties"]
    assert fn["Layers"] == [{"Ref": "SidecarLayerArn"}]
    assert fn["Environment"]["Variables"]["JWT_KEY_SOURCE"] == {"Fn::Sub": "secretsmanager:${JwtSecretArn}"}
    role = resources["MyFunctionRole"]["Properties"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert statements == [
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "JwtSecretArn"}}
    ]


def test_the_layer_only_stack_keeps_its_layer_versions():
    path = ROOT / "deploy" / "layer.yaml"
    cfn_lint(path)
    out = translate(yaml.load(path.read_text(), Loader=CfnLoader), {"Architecture": "arm64"})
    layers = {n: r for n, r in out["Resources"].items() if r["Type"] == "AWS::Lambda::LayerVersion"}
    assert len(layers) == 2
    for layer in layers.values():
        assert layer["DeletionPolicy"] == "Retain"
        assert layer["UpdateReplacePolicy"] == "Retain"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto():
    port = free_port()
    server = subprocess.Popen(
        [tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    env = dict(os.environ)
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
    )
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(var, None)
    yield env
    server.terminate()
    server.wait(timeout=10)


def client(env, service):
    return boto3.client(
        service, endpoint_url=env["AWS_ENDPOINT_URL"], region_name=REGION,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


def a_zip(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def test_make_publish_layer_prints_the_layer_version_arn(moto, tmp_path):
    layer = tmp_path / "layer.zip"
    layer.write_bytes(a_zip({"extensions/lambda-sidecar": "#!/bin/sh\n"}))
    r = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "publish-layer-zip", f"LAYER_ZIP={layer}",
         "LAYER_ARCH=arm64", f"AWS_REGION={REGION}"],
        env=moto, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    arn = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"arn:aws:lambda:eu-west-1:\d{12}:layer:lambda-sidecar-arm64:\d+", arn), arn
    versions = client(moto, "lambda").list_layer_versions(LayerName="lambda-sidecar-arm64")
    assert versions["LayerVersions"][0]["CompatibleArchitectures"] == ["arm64"]


def test_the_cli_snippet_adds_the_layer_the_key_source_and_the_grant(moto):
    iam, lam, sm = client(moto, "iam"), client(moto, "lambda"), client(moto, "secretsmanager")
    role = iam.create_role(
        RoleName="my-fn-role",
        AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                           "Action": "sts:AssumeRole"}],
        }),
    )["Role"]
    secret = sm.create_secret(Name="my-fn/jwt-key", SecretString="x" * 48)["ARN"]
    layer = lam.publish_layer_version(
        LayerName="lambda-sidecar-cli", Content={"ZipFile": a_zip({"extensions/x": "x"})},
        CompatibleArchitectures=["arm64"],
    )["LayerVersionArn"]
    lam.create_function(
        FunctionName="my-fn", Runtime="python3.13", Role=role["Arn"], Handler="app.handler",
        Code={"ZipFile": a_zip({"app.py": "def handler(e, c):\n    return 1\n"})},
        Architectures=["arm64"],
    )
    env = dict(moto, FUNCTION="my-fn", ROLE="my-fn-role", LAYER_ARN=layer, SECRET_ARN=secret)
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", snippet("cli")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    config = lam.get_function_configuration(FunctionName="my-fn")
    assert [l["Arn"] for l in config["Layers"]] == [layer]
    assert config["Environment"]["Variables"] == {
        "JWT_KEY_SOURCE": f"secretsmanager:{secret}",
        "JWT_AUDIENCE": "orders-api",
        "JWT_ALLOWED_CLAIMS": "role",
    }
    policy = iam.get_role_policy(RoleName="my-fn-role", PolicyName="read-jwt-key")["PolicyDocument"]
    assert policy["Statement"] == [
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret}
    ]


CDK = ROOT / "tests" / "cdk"


def test_the_cdk_snippet_synthesises_lints_and_grants_the_secret(tmp_path):
    """The TypeScript snippet, inside a stack, synthesised by aws-cdk-lib (tests/cdk, installed
    by `make test-packaging`), and the template it makes linted and read."""
    assert (CDK / "node_modules" / "aws-cdk-lib").exists(), "run: cd tests/cdk && npm ci"
    code = snippet("cdk")
    imports = "\n".join(l for l in code.splitlines() if l.startswith("import "))
    body = "\n".join("    " + l for l in code.splitlines() if not l.startswith("import "))
    (tmp_path / "node_modules").symlink_to(CDK / "node_modules")
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "index.mjs").write_text("export const handler = async () => ({});\n")
    (tmp_path / "stack.ts").write_text(f"""import * as cdk from "aws-cdk-lib";
import {{ Construct }} from "constructs";
{imports}

class MyFunctionStack extends cdk.Stack {{
  constructor(scope: Construct, id: string) {{
    super(scope, id, {{ env: {{ account: "123456789012", region: "{REGION}" }} }});
    const jwtSecretArn = "{SECRET_ARN}";
    const sidecarLayerArn = "{LAYER_ARN}";
{body}
  }}
}}

const app = new cdk.App({{ outdir: "cdk.out" }});
new MyFunctionStack(app, "MyFunctionStack");
app.synth();
""")
    r = subprocess.run(
        ["node", "--import", "tsx", "stack.ts"], cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    path = tmp_path / "cdk.out" / "MyFunctionStack.template.json"
    # What aws-cdk-lib itself writes, not the snippet: Fn::Join where Sub would do (I1022),
    # and a DependsOn on the role beside its GetAtt (W3005).
    cfn_lint(path, ignore=("I1022", "W3005"))
    resources = json.loads(path.read_text())["Resources"]
    (fn,) = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Function"]
    assert fn["Layers"] == [LAYER_ARN]
    assert fn["Architectures"] == ["arm64"]
    assert fn["Environment"]["Variables"]["JWT_KEY_SOURCE"] == f"secretsmanager:{SECRET_ARN}"
    statements = [
        s
        for r in resources.values()
        if r["Type"] == "AWS::IAM::Policy"
        for s in r["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert statements == [
        {
            "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
            "Effect": "Allow",
            "Resource": SECRET_ARN,
        }
    ], statements
