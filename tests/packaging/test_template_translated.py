"""template.yaml as CloudFormation receives it: translated offline by the SAM translator
(samtranslator, the Serverless transform `sam deploy` runs), then evaluated for a set of
parameters (conditions, !If, !Ref, !Sub), so that what is checked is the role's policies and
the function's permissions as they would be created, not the template's text."""

import os
import re

import pytest
import yaml
from samtranslator.translator.transform import transform

from conftest import TEMPLATE, CfnLoader

PSEUDO = {
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "sidecar",
}
SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:jwt-key-AbCdEf"
KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CMK = "arn:aws:kms:eu-west-1:123456789012:key/0000abcd-12ab-34cd-56ef-1234567890ab"
NO_VALUE = object()


class ManagedPolicies:
    """The translator asks IAM for the ARNs of AWS managed policies it attaches; offline,
    none are known and it writes the well-known ARNs itself."""

    def load(self):
        return {}


def translated(params):
    template = yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)
    # What `sam package` does: local code becomes S3 objects.
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = "s3://bucket/code.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", PSEUDO["AWS::Region"])
    return transform(template, dict(params), ManagedPolicies())


class Stack:
    """The translated template, evaluated for `params` (defaults from the template)."""

    def __init__(self, **params):
        self.template = translated(params)
        self.params = {
            name: str(p.get("Default", "")) for name, p in self.template["Parameters"].items()
        }
        self.params.update(params)
        self.conditions = {}
        for name, cond in self.template.get("Conditions", {}).items():
            self.conditions[name] = self.value(cond)

    def value(self, node):
        if isinstance(node, list):
            return [v for v in (self.value(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                return self.params.get(arg, PSEUDO.get(arg, f"<{arg}>"))
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::If":
                cond, yes, no = arg
                return self.value(yes if self.condition(cond) else no)
            if key == "Fn::Equals":
                a, b = (self.value(x) for x in arg)
                return a == b
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Fn::And":
                return all(self.value(x) for x in arg)
            if key == "Fn::Or":
                return any(self.value(x) for x in arg)
            if key == "Fn::Sub":
                return re.sub(
                    r"\$\{([^}]+)\}",
                    lambda m: str(self.value({"Ref": m.group(1)})),
                    arg,
                )
        out = {}
        for key, v in node.items():
            v = self.value(v)
            if v is not NO_VALUE:
                out[key] = v
        return out

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = self.value(self.template["Conditions"][name])
        return self.conditions[name]

    def resources(self, type_):
        return {
            name: self.value(r.get("Properties", {}))
            for name, r in self.template["Resources"].items()
            if r["Type"] == type_ and ("Condition" not in r or self.condition(r["Condition"]))
        }

    def role_statements(self):
        role = self.resources("AWS::IAM::Role")["ExampleFunctionRole"]
        return [s for policy in role.get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]

    def environment(self):
        fn = self.resources("AWS::Lambda::Function")["ExampleFunction"]
        return fn["Environment"]["Variables"]


def grants(statements):
    """(action, resource) pairs the inline policies allow."""
    out = set()
    for s in statements:
        assert s["Effect"] == "Allow"
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        for action in actions:
            out.add((action, s["Resource"]))
    return out


@pytest.mark.parametrize(
    "params, source, allowed",
    [
        (
            {"JwtSecretArn": SECRET},
            f"secretsmanager:{SECRET}",
            {("secretsmanager:GetSecretValue", SECRET)},
        ),
        (
            {"JwtKeySource": "ssm", "JwtSsmParameter": "/sidecar/jwt-key"},
            "ssm:/sidecar/jwt-key",
            {("ssm:GetParameter", "arn:aws:ssm:eu-west-1:123456789012:parameter/sidecar/jwt-key")},
        ),
        (
            {"JwtKeySource": "kms", "JwtKmsKeyArn": KMS_KEY, "JwtAlgorithm": "ES256"},
            f"kms:{KMS_KEY}",
            {("kms:DescribeKey", KMS_KEY), ("kms:GetPublicKey", KMS_KEY), ("kms:Sign", KMS_KEY)},
        ),
    ],
)
def test_each_key_source_gets_exactly_its_actions_and_no_key_in_the_environment(
    params, source, allowed
):
    stack = Stack(**params)
    assert grants(stack.role_statements()) == allowed
    env = stack.environment()
    assert env["JWT_KEY_SOURCE"] == source
    for var in ("JWT_SECRET", "JWT_PRIVATE_KEY", "JWT_PRIVATE_KEY_FILE"):
        assert var not in env, var
    assert not any("resolve:secretsmanager" in str(v) for v in env.values()), env


@pytest.mark.parametrize(
    "params, service",
    [
        ({"JwtSecretArn": SECRET}, "secretsmanager"),
        ({"JwtKeySource": "ssm", "JwtSsmParameter": "/k"}, "ssm"),
    ],
)
def test_a_customer_managed_key_adds_decrypt_through_that_service_only(params, service):
    stack = Stack(JwtKeyEncryptionKeyArn=CMK, **params)
    decrypt = [s for s in stack.role_statements() if s["Action"] == "kms:Decrypt"]
    assert decrypt == [
        {
            "Sid": "DecryptTheSigningKey",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": CMK,
            "Condition": {"StringEquals": {"kms:ViaService": f"{service}.eu-west-1.amazonaws.com"}},
        }
    ]
    # KMS signing decrypts nothing.
    kms = Stack(JwtKeySource="kms", JwtKmsKeyArn=KMS_KEY, JwtAlgorithm="RS256", JwtKeyEncryptionKeyArn=CMK)
    assert not any(s["Action"] == "kms:Decrypt" for s in kms.role_statements())


def test_a_public_url_gets_both_permissions_and_an_iam_url_none():
    public = Stack(JwtSecretArn=SECRET, FunctionUrlAuthType="NONE")
    perms = {
        (p["Action"], p["Principal"], p.get("FunctionUrlAuthType"), p.get("InvokedViaFunctionUrl"))
        for p in public.resources("AWS::Lambda::Permission").values()
    }
    assert perms == {
        ("lambda:InvokeFunctionUrl", "*", "NONE", None),
        ("lambda:InvokeFunction", "*", None, True),
    }
    url = public.resources("AWS::Lambda::Url")["ExampleFunctionUrl"]
    assert url["AuthType"] == "NONE"
    # AWS_IAM: no resource-based permission; callers' own policies grant both actions.
    iam = Stack(JwtSecretArn=SECRET)
    assert iam.resources("AWS::Lambda::Permission") == {}
    assert iam.resources("AWS::Lambda::Url")["ExampleFunctionUrl"]["AuthType"] == "AWS_IAM"


def test_guided_deploy_accepts_an_empty_answer_for_every_optional_parameter(template):
    # sam deploy --guided prompts a NoEcho parameter without a default, so an empty answer
    # loops; every other prompt offers the template's Default.
    for name, param in template["Parameters"].items():
        assert not param.get("NoEcho"), name
        assert "Default" in param, name
        pattern = param.get("AllowedPattern")
        if param["Default"] == "" and pattern:
            assert re.fullmatch(pattern, ""), name


def test_emf_is_a_parameter_on_by_default():
    assert Stack(JwtSecretArn=SECRET).environment()["SIDECAR_EMF"] == "on"
    assert Stack(JwtSecretArn=SECRET, Emf="off").environment()["SIDECAR_EMF"] == "off"
    # With the AWS-native export its CloudWatch metrics and EMF would count twice (the
    # sidecar refuses both at init unless told otherwise): EMF is off.
    native = Stack(JwtSecretArn=SECRET, AwsNativeExport="true").environment()
    assert native["SIDECAR_EMF"] == "off"


def test_the_layers_list_current_runtimes():
    layers = Stack(JwtSecretArn=SECRET).resources("AWS::Lambda::LayerVersion")
    for layer in layers.values():
        runtimes = layer["CompatibleRuntimes"]
        assert len(runtimes) <= 15, "CloudFormation's limit"
        for runtime in ("nodejs24.x", "python3.14", "java25", "dotnet10", "ruby3.4", "provided.al2023"):
            assert runtime in runtimes, runtime
