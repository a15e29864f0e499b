#!/usr/bin/env python3
"""Security policy checks on a Terraform plan (the JSON of `terraform show -json <planfile>`).

Checks (each one a function of the plan returning its violations):

  s3_public_access_blocked     every bucket has a public access block with all four settings on
  s3_no_public_grants          no bucket ACL or bucket policy grants access to everyone
  s3_encrypted_with_kms        every bucket has default encryption with SSE-KMS
  s3_tls_only                  every bucket policy denies requests that do not use TLS (aws:SecureTransport)
  opensearch_encrypted         every search domain is encrypted at rest and node-to-node
  opensearch_https_only        every search domain enforces HTTPS with a TLS 1.2+ policy
  opensearch_access_control    every search domain is in a VPC, has fine-grained access control, no anonymous
                               access and no access policy open to everyone
  iam_no_wildcard_admin        no policy allows a wildcard action ("*", "service:*" or a glob such as "s3:Get*")
                               on any resource, no Allow with NotAction/NotResource, no role assumable by
                               anyone, no AdministratorAccess-style attachments, and every policy is known at
                               plan time (otherwise it cannot be verified)
  sg_no_ingress_from_anywhere  no security group admits inbound traffic from the whole internet (0.0.0.0/0,
                               ::/0): inline ingress of aws_security_group / aws_default_security_group,
                               aws_security_group_rule of type ingress, aws_vpc_security_group_ingress_rule
  batch_volumes_encrypted      every EC2 or Spot AWS Batch compute environment launches its instances from a
                               launch template in the plan whose EBS volumes are all encrypted with a
                               customer-managed KMS key
  airflow_ui_private           every Amazon MWAA environment serves the Airflow UI inside the VPC only
                               (webserver_access_mode PRIVATE_ONLY)

Why any wildcard action fails, whatever the resource. "*" or "service:*" on one resource is every power over that
resource, including the ones that change who else may use it: "s3:*" on the catalogue bucket may rewrite the bucket
policy, delete every object version and switch off versioning; "kms:*" on the platform key may hand the key to
anyone (kms:PutKeyPolicy, kms:CreateGrant). A narrower resource does not make those safe. Globs are the same
hazard in a smaller size and they grow: "s3:Put*" includes s3:PutBucketPolicy, "kms:Create*" includes
kms:CreateGrant, and "s3:GetBucket*" has matched new actions as AWS added them (s3:GetBucketAbac,
s3:GetBucketMetadataTableConfiguration), granted silently, never reviewed. So an Allow names every action it grants
(IAM action names are case-insensitive, so "*" and "?" anywhere in one is a wildcard); the plan then shows exactly
what each role may do. Deny statements may use wildcards: a broad Deny only takes away.

"From anywhere" means a CIDR covering the whole IPv4 or IPv6 space (prefix length 0, whatever the address bits),
on any port and protocol: nothing in this deployment is meant to be reached from the internet. The Batch check
reads the launch template's block device mappings only: volumes that a custom AMI adds outside them cannot be seen
in a plan. MWAA is the only Airflow host here; the Airflow UI check covers every aws_mwaa_environment in the plan,
and anything else that would front an Airflow web server is held by the security group check.

The checks fail closed: a value they need that is unknown at plan time is a violation, because it cannot be
verified. Settings are tied to their bucket by the bucket *name* (reference `aws_s3_bucket.<x>.bucket`, which is
known at plan time, rather than `.id`). A compute environment is tied to its launch template by the template's
name or id when the plan knows it, otherwise by the reference in the configuration
(`aws_launch_template.<x>.id` in the same module).

Usage:
    terraform plan -out=tfplan && terraform show -json tfplan > plan.json
    python infra/policy_check.py plan.json          # exit 0: all checks pass; 1: violations; 2: unreadable plan

Standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODERN_TLS_POLICIES = frozenset({"Policy-Min-TLS-1-2-2019-07", "Policy-Min-TLS-1-2-PFS-2023-10"})
KMS_ALGORITHMS = frozenset({"aws:kms", "aws:kms:dsse"})
PUBLIC_ACLS = frozenset({"public-read", "public-read-write", "authenticated-read"})
PUBLIC_GRANTEE_URIS = frozenset(
    {
        "http://acs.amazonaws.com/groups/global/AllUsers",
        "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
    }
)
# Condition keys that pin an "everyone" principal down to this account/organisation/network.
RESTRICTING_CONDITION_KEYS = frozenset(
    {
        "aws:sourcearn",
        "aws:sourceaccount",
        "aws:sourceowner",
        "aws:sourcevpc",
        "aws:sourcevpce",
        "aws:sourceip",
        "aws:principalorgid",
        "aws:principalaccount",
        "aws:principalarn",
        "aws:sourceorgid",
    }
)
ADMIN_MANAGED_POLICIES = re.compile(r":iam::aws:policy/(AdministratorAccess|PowerUserAccess|IAMFullAccess)$")

# Where policy documents live: resource type -> attributes holding a JSON policy.
# required=True: the attribute is always set, so "unknown" means "cannot be verified".
# required=False: optional+computed; unknown only matters when the configuration sets it.
POLICY_ATTRIBUTES: dict[str, list[tuple[str, bool]]] = {
    "aws_iam_policy": [("policy", True)],
    "aws_iam_role_policy": [("policy", True)],
    "aws_iam_user_policy": [("policy", True)],
    "aws_iam_group_policy": [("policy", True)],
    "aws_iam_role": [("assume_role_policy", True)],
    "aws_s3_bucket_policy": [("policy", True)],
    "aws_s3_bucket": [("policy", False)],
    "aws_kms_key": [("policy", False)],
    "aws_opensearch_domain": [("access_policies", False)],
    "aws_opensearch_domain_policy": [("access_policies", True)],
    "aws_elasticsearch_domain": [("access_policies", False)],
    "aws_elasticsearch_domain_policy": [("access_policies", True)],
    "aws_cloudwatch_log_resource_policy": [("policy_document", True)],
    "aws_vpc_endpoint": [("policy", False)],
    "aws_sqs_queue_policy": [("policy", True)],
    "aws_sns_topic_policy": [("policy", True)],
    "aws_ecr_repository_policy": [("policy", True)],
    "aws_secretsmanager_secret_policy": [("policy", True)],
}
SEARCH_DOMAIN_TYPES = ("aws_opensearch_domain", "aws_elasticsearch_domain")
SEARCH_POLICY_TYPES = (*SEARCH_DOMAIN_TYPES, "aws_opensearch_domain_policy", "aws_elasticsearch_domain_policy")


class PlanError(ValueError):
    """The input is not the JSON of a Terraform plan."""


@dataclass(frozen=True)
class Resource:
    """One managed resource instance as it will be after the plan is applied."""

    address: str
    type: str
    after: dict[str, Any]
    after_unknown: dict[str, Any]

    def unknown(self, attribute: str) -> bool:
        return self.after_unknown.get(attribute) is True

    def block(self, attribute: str) -> dict[str, Any] | None:
        """First element of a nested block (Terraform plans encode blocks as lists), or None."""
        value = self.after.get(attribute)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return value[0]
        return None


@dataclass(frozen=True)
class Violation:
    check: str
    address: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.address}: {self.message}"


class Plan:
    """Read access to the parts of a plan JSON the checks need."""

    def __init__(self, data: dict[str, Any]):
        if not isinstance(data, dict) or "format_version" not in data:
            raise PlanError("not a Terraform plan JSON (no format_version); use `terraform show -json <planfile>`")
        if "resource_changes" not in data and "planned_values" not in data:
            raise PlanError("plan JSON has neither resource_changes nor planned_values")
        self.data = data
        self.resources: list[Resource] = []
        for change in data.get("resource_changes", []):
            if change.get("mode") != "managed":
                continue
            actions = change.get("change", {}).get("actions", [])
            if actions == ["delete"]:
                continue
            self.resources.append(
                Resource(
                    address=change["address"],
                    type=change["type"],
                    after=change["change"].get("after") or {},
                    after_unknown=change["change"].get("after_unknown") or {},
                )
            )

    @classmethod
    def load(cls, source: str | Path | dict[str, Any]) -> Plan:
        if isinstance(source, dict):
            return cls(source)
        try:
            return cls(json.loads(Path(source).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise PlanError(f"cannot read plan JSON {source}: {exc}") from exc

    def of_type(self, *types: str) -> list[Resource]:
        return [r for r in self.resources if r.type in types]

    def configuration_of(self, address: str) -> dict[str, Any] | None:
        """The configuration block of the resource at `address` (module keys and instance keys ignored), or None."""
        module = self.data.get("configuration", {}).get("root_module")
        if module is None:
            return None
        parts = _split_address(address)
        for name in parts[:-1]:
            call = module.get("module_calls", {}).get(name)
            if call is None:
                return None
            module = call.get("module", {})
        for resource in module.get("resources", []):
            if resource.get("address") == parts[-1]:
                return resource
        return None

    def configured(self, address: str, attribute: str) -> bool:
        """Whether the configuration sets `attribute` on the resource at `address` (True when unsure)."""
        resource = self.configuration_of(address)
        return True if resource is None else attribute in resource.get("expressions", {})

    def references(self, address: str, *path: str) -> list[str] | None:
        """What the expression at `path` (nested blocks: their first element) refers to, e.g.
        ["aws_launch_template.workers.id", "aws_launch_template.workers"]; None when the configuration does not say."""
        resource = self.configuration_of(address)
        node: Any = resource.get("expressions", {}) if resource else None
        for key in path:
            if isinstance(node, list):
                node = node[0] if node and isinstance(node[0], dict) else None
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or "references" not in node:
            return None
        return [r for r in node["references"] if isinstance(r, str)]


def _split_address(address: str) -> list[str]:
    """'module.a["k"].module.b.aws_x.y[0]' -> ['a', 'b', 'aws_x.y'] (module names and the resource, no keys)."""
    parts: list[str] = []
    rest = re.sub(r"\[[^\]]*\]", "", address)
    tokens = rest.split(".")
    i = 0
    while i < len(tokens) and tokens[i] == "module":
        parts.append(tokens[i + 1])
        i += 2
    parts.append(".".join(tokens[i : i + 2]))
    return parts


# --- policy documents -------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in _as_list(document.get("Statement")) if isinstance(s, dict)]


def _principal_is_everyone(statement: dict[str, Any]) -> bool:
    principal = statement.get("Principal")
    if principal == "*":
        return True
    if isinstance(principal, dict):
        return any("*" in _as_list(v) for v in principal.values())
    return False


def _restricted_by_condition(statement: dict[str, Any]) -> bool:
    for operator_block in (statement.get("Condition") or {}).values():
        if isinstance(operator_block, dict) and any(k.lower() in RESTRICTING_CONDITION_KEYS for k in operator_block):
            return True
    return False


def _is_wildcard_action(action: str) -> bool:
    # IAM matches "*" and "?" anywhere in an action name, so both make a pattern, not a name.
    return "*" in action or "?" in action


def policy_documents(plan: Plan) -> Iterator[tuple[Resource, str, dict[str, Any] | None, str | None]]:
    """Yield (resource, attribute, parsed document or None, problem or None) for every policy in the plan."""
    for resource in plan.resources:
        for attribute, required in POLICY_ATTRIBUTES.get(resource.type, []):
            if resource.unknown(attribute):
                if required or plan.configured(resource.address, attribute):
                    yield resource, attribute, None, "policy is not known at plan time, so it cannot be verified"
                continue
            raw = resource.after.get(attribute)
            if raw in (None, ""):
                continue
            yield (resource, attribute, *_parse_policy(raw))
        if resource.type == "aws_iam_role":
            for i, inline in enumerate(_as_list(resource.after.get("inline_policy"))):
                raw = inline.get("policy") if isinstance(inline, dict) else None
                if raw:
                    yield (resource, f"inline_policy[{i}]", *_parse_policy(raw))


def _parse_policy(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    try:
        document = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        return None, f"policy is not valid JSON: {exc}"
    if not isinstance(document, dict):
        return None, "policy is not a JSON object"
    return document, None


# --- buckets ----------------------------------------------------------------------------------------------------


def _buckets(plan: Plan) -> list[Resource]:
    return plan.of_type("aws_s3_bucket")


def _bucket_name(resource: Resource) -> str | None:
    return None if resource.unknown("bucket") else resource.after.get("bucket")


def _by_bucket(plan: Plan, resource_type: str) -> tuple[dict[str, list[Resource]], list[Resource]]:
    """Resources of a bucket-settings type grouped by bucket name; plus those whose bucket is unknown."""
    grouped: dict[str, list[Resource]] = {}
    unknown: list[Resource] = []
    for resource in plan.of_type(resource_type):
        name = _bucket_name(resource)
        if name is None:
            unknown.append(resource)
        else:
            grouped.setdefault(name, []).append(resource)
    return grouped, unknown


def _unknown_bucket_violations(check: str, resources: list[Resource]) -> list[Violation]:
    return [
        Violation(
            check,
            r.address,
            "its bucket is unknown at plan time; reference aws_s3_bucket.<name>.bucket so the plan shows it",
        )
        for r in resources
    ]


def _bucket_policies(plan: Plan) -> dict[str, list[tuple[Resource, dict[str, Any] | None]]]:
    """Parsed bucket policies by bucket name (separate aws_s3_bucket_policy resources and inline policies)."""
    result: dict[str, list[tuple[Resource, dict[str, Any] | None]]] = {}
    for resource in plan.of_type("aws_s3_bucket_policy"):
        name = _bucket_name(resource)
        if name is None or resource.unknown("policy"):
            continue
        document, _ = _parse_policy(resource.after.get("policy"))
        result.setdefault(name, []).append((resource, document))
    for resource in _buckets(plan):
        raw = resource.after.get("policy")
        name = _bucket_name(resource)
        if name and raw and not resource.unknown("policy"):
            document, _ = _parse_policy(raw)
            result.setdefault(name, []).append((resource, document))
    return result


def check_s3_public_access_blocked(plan: Plan) -> list[Violation]:
    check = "s3_public_access_blocked"
    blocks, unknown = _by_bucket(plan, "aws_s3_bucket_public_access_block")
    violations = _unknown_bucket_violations(check, unknown)
    settings = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    for bucket in _buckets(plan):
        name = _bucket_name(bucket)
        if name is None:
            violations.append(Violation(check, bucket.address, "bucket name is unknown at plan time"))
            continue
        if not blocks.get(name):
            violations.append(Violation(check, bucket.address, f"bucket {name} has no public access block"))
            continue
        for block in blocks[name]:
            off = [s for s in settings if block.after.get(s) is not True]
            if off:
                violations.append(Violation(check, block.address, f"bucket {name}: {', '.join(off)} not enabled"))
    return violations


def check_s3_no_public_grants(plan: Plan) -> list[Violation]:
    check = "s3_no_public_grants"
    violations: list[Violation] = []
    for bucket in _buckets(plan):
        if bucket.after.get("acl") in PUBLIC_ACLS:
            violations.append(Violation(check, bucket.address, f"canned ACL {bucket.after['acl']} makes it public"))
    for acl in plan.of_type("aws_s3_bucket_acl"):
        if acl.after.get("acl") in PUBLIC_ACLS:
            violations.append(Violation(check, acl.address, f"canned ACL {acl.after['acl']} makes the bucket public"))
        for policy in _as_list(acl.after.get("access_control_policy")):
            for grant in _as_list(policy.get("grant") if isinstance(policy, dict) else None):
                for grantee in _as_list(grant.get("grantee") if isinstance(grant, dict) else None):
                    if isinstance(grantee, dict) and grantee.get("uri") in PUBLIC_GRANTEE_URIS:
                        violations.append(Violation(check, acl.address, f"ACL grants {grantee['uri']}"))
    for name, policies in _bucket_policies(plan).items():
        for resource, document in policies:
            for statement in _statements(document or {}):
                if (
                    statement.get("Effect") == "Allow"
                    and _principal_is_everyone(statement)
                    and not _restricted_by_condition(statement)
                ):
                    violations.append(
                        Violation(check, resource.address, f'bucket {name}: policy allows everyone (Principal "*")')
                    )
    return violations


def check_s3_encrypted_with_kms(plan: Plan) -> list[Violation]:
    check = "s3_encrypted_with_kms"
    configs, unknown = _by_bucket(plan, "aws_s3_bucket_server_side_encryption_configuration")
    violations = _unknown_bucket_violations(check, unknown)
    for bucket in _buckets(plan):
        name = _bucket_name(bucket)
        if name is None:
            violations.append(Violation(check, bucket.address, "bucket name is unknown at plan time"))
            continue
        rules = [rule for config in configs.get(name, []) for rule in _as_list(config.after.get("rule"))]
        if not bucket.unknown("server_side_encryption_configuration"):
            for inline in _as_list(bucket.after.get("server_side_encryption_configuration")):
                rules.extend(_as_list(inline.get("rule") if isinstance(inline, dict) else None))
        if not rules:
            violations.append(Violation(check, bucket.address, f"bucket {name} has no default encryption"))
            continue
        for rule in rules:
            defaults = _as_list(rule.get("apply_server_side_encryption_by_default") if isinstance(rule, dict) else None)
            algorithms = {d.get("sse_algorithm") for d in defaults if isinstance(d, dict)}
            if not algorithms or not algorithms <= KMS_ALGORITHMS:
                shown = ", ".join(sorted(str(a) for a in algorithms)) or "none"
                violations.append(
                    Violation(check, bucket.address, f"bucket {name} default encryption is {shown}, not SSE-KMS")
                )
    return violations


def _denies_insecure_transport(document: dict[str, Any], bucket: str) -> bool:
    wanted = {f"arn:{p}:s3:::{bucket}" for p in ("aws", "aws-cn", "aws-us-gov")}
    for statement in _statements(document):
        if statement.get("Effect") != "Deny" or not _principal_is_everyone(statement):
            continue
        actions = {a for a in _as_list(statement.get("Action")) if isinstance(a, str)}
        if not actions & {"*", "s3:*"}:
            continue
        resources = {r for r in _as_list(statement.get("Resource")) if isinstance(r, str)}
        covers_bucket = bool(resources & wanted) or "*" in resources
        covers_objects = any(r in {f"{w}/*" for w in wanted} or r == "*" for r in resources)
        if not (covers_bucket and covers_objects):
            continue
        condition = (statement.get("Condition") or {}).get("Bool") or {}
        secure = condition.get("aws:SecureTransport")
        if any(str(v).lower() == "false" for v in _as_list(secure)):
            return True
    return False


def check_s3_tls_only(plan: Plan) -> list[Violation]:
    check = "s3_tls_only"
    policies = _bucket_policies(plan)
    violations: list[Violation] = []
    for resource in plan.of_type("aws_s3_bucket_policy"):
        if _bucket_name(resource) is None:
            violations.extend(_unknown_bucket_violations(check, [resource]))
        elif resource.unknown("policy"):
            violations.append(Violation(check, resource.address, "policy is unknown at plan time"))
    for bucket in _buckets(plan):
        name = _bucket_name(bucket)
        if name is None:
            violations.append(Violation(check, bucket.address, "bucket name is unknown at plan time"))
            continue
        documents = [d for _, d in policies.get(name, []) if d]
        if not any(_denies_insecure_transport(d, name) for d in documents):
            violations.append(
                Violation(
                    check,
                    bucket.address,
                    f"bucket {name} has no policy denying s3:* on the bucket and its objects when "
                    "aws:SecureTransport is false",
                )
            )
    return violations


# --- search domains ---------------------------------------------------------------------------------------------


def check_opensearch_encrypted(plan: Plan) -> list[Violation]:
    check = "opensearch_encrypted"
    violations: list[Violation] = []
    for domain in plan.of_type(*SEARCH_DOMAIN_TYPES):
        at_rest = domain.block("encrypt_at_rest") or {}
        if at_rest.get("enabled") is not True:
            violations.append(Violation(check, domain.address, "encryption at rest is not enabled"))
        node_to_node = domain.block("node_to_node_encryption") or {}
        if node_to_node.get("enabled") is not True:
            violations.append(Violation(check, domain.address, "node-to-node encryption is not enabled"))
    return violations


def check_opensearch_https_only(plan: Plan) -> list[Violation]:
    check = "opensearch_https_only"
    violations: list[Violation] = []
    for domain in plan.of_type(*SEARCH_DOMAIN_TYPES):
        options = domain.block("domain_endpoint_options") or {}
        if options.get("enforce_https") is not True:
            violations.append(Violation(check, domain.address, "HTTPS is not enforced (enforce_https)"))
        policy = options.get("tls_security_policy")
        if policy not in MODERN_TLS_POLICIES:
            shown = "unset/unknown" if policy is None else policy
            violations.append(
                Violation(
                    check,
                    domain.address,
                    f"TLS policy {shown} is not one of {', '.join(sorted(MODERN_TLS_POLICIES))}",
                )
            )
    return violations


def check_opensearch_access_control(plan: Plan) -> list[Violation]:
    check = "opensearch_access_control"
    violations: list[Violation] = []
    for domain in plan.of_type(*SEARCH_DOMAIN_TYPES):
        security = domain.block("advanced_security_options") or {}
        if security.get("enabled") is not True:
            violations.append(Violation(check, domain.address, "fine-grained access control is not enabled"))
        if security.get("anonymous_auth_enabled") is True:
            violations.append(Violation(check, domain.address, "anonymous access is enabled"))
        for master in _as_list(security.get("master_user_options")):
            if isinstance(master, dict) and master.get("master_user_password"):
                violations.append(
                    Violation(check, domain.address, "master user password in the configuration; use an IAM role ARN")
                )
        vpc = domain.block("vpc_options") or {}
        vpc_unknown = (_as_list(domain.after_unknown.get("vpc_options")) or [{}])[0]
        subnets_pending = isinstance(vpc_unknown, dict) and vpc_unknown.get("subnet_ids") is True
        if not (vpc.get("subnet_ids") or (domain.block("vpc_options") is not None and subnets_pending)):
            violations.append(Violation(check, domain.address, "domain has a public endpoint (no vpc_options)"))
    for resource, _attribute, document, _problem in policy_documents(plan):
        if resource.type not in SEARCH_POLICY_TYPES:
            continue
        for statement in _statements(document or {}):
            if (
                statement.get("Effect") == "Allow"
                and _principal_is_everyone(statement)
                and not _restricted_by_condition(statement)
            ):
                violations.append(Violation(check, resource.address, 'access policy allows everyone (Principal "*")'))
    return violations


# --- IAM --------------------------------------------------------------------------------------------------------


def _shown_resources(statement: dict[str, Any]) -> str:
    if "NotResource" in statement:
        return "NotResource"
    resources = [r for r in _as_list(statement.get("Resource")) if isinstance(r, str)]
    if "*" in resources:
        return 'Resource "*"'
    if not resources:
        return "no Resource (the policy's own resource)"
    shown = ", ".join(resources[:2])
    return shown + (f" and {len(resources) - 2} more" if len(resources) > 2 else "")


def check_iam_no_wildcard_admin(plan: Plan) -> list[Violation]:
    check = "iam_no_wildcard_admin"
    violations: list[Violation] = []
    for resource, attribute, document, problem in policy_documents(plan):
        where = f"{resource.address} ({attribute})"
        if problem:
            violations.append(Violation(check, where, problem))
            continue
        for i, statement in enumerate(_statements(document or {})):
            if statement.get("Effect") != "Allow":
                continue
            label = statement.get("Sid") or f"statement {i}"
            if "NotAction" in statement:
                violations.append(Violation(check, where, f"{label}: Allow with NotAction grants almost everything"))
            if "NotResource" in statement:
                violations.append(Violation(check, where, f"{label}: Allow with NotResource"))
            actions = [a for a in _as_list(statement.get("Action")) if isinstance(a, str)]
            wildcard_actions = [a for a in actions if _is_wildcard_action(a)]
            if wildcard_actions:
                violations.append(
                    Violation(
                        check,
                        where,
                        f"{label}: allows {', '.join(wildcard_actions)} on {_shown_resources(statement)}; "
                        "name each action it needs",
                    )
                )
            if (
                attribute == "assume_role_policy"
                and _principal_is_everyone(statement)
                and not _restricted_by_condition(statement)
            ):
                violations.append(Violation(check, where, f"{label}: anyone may assume the role"))
    attachments = plan.of_type(
        "aws_iam_role_policy_attachment",
        "aws_iam_user_policy_attachment",
        "aws_iam_group_policy_attachment",
        "aws_iam_policy_attachment",
    )
    for attachment in attachments:
        arn = attachment.after.get("policy_arn") or ""
        if ADMIN_MANAGED_POLICIES.search(arn):
            violations.append(Violation(check, attachment.address, f"attaches {arn}"))
    for role in plan.of_type("aws_iam_role"):
        for arn in _as_list(role.after.get("managed_policy_arns")):
            if isinstance(arn, str) and ADMIN_MANAGED_POLICIES.search(arn):
                violations.append(Violation(check, role.address, f"attaches {arn}"))
    return violations


# --- network ----------------------------------------------------------------------------------------------------


def _unknown_in(marker: Any) -> bool:
    """Whether an after_unknown value marks anything inside it as unknown."""
    if marker is True:
        return True
    if isinstance(marker, list):
        return any(_unknown_in(m) for m in marker)
    if isinstance(marker, dict):
        return any(_unknown_in(m) for m in marker.values())
    return False


def _element(marker: Any, index: int) -> dict[str, Any]:
    """The after_unknown of element `index` of a list-valued attribute ({} when nothing in it is unknown)."""
    if isinstance(marker, list) and index < len(marker) and isinstance(marker[index], dict):
        return marker[index]
    return {}


def _covers_everything(cidr: str) -> bool | None:
    """True for a CIDR spanning the whole IPv4 or IPv6 space (prefix length 0); None when it is not a CIDR."""
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False).prefixlen == 0
    except ValueError:
        return None


def _ports(protocol: Any, from_port: Any, to_port: Any) -> str:
    if str(protocol).lower() in ("-1", "all"):
        return "all traffic"
    if from_port is None and to_port is None:
        return f"protocol {protocol}"
    span = str(from_port) if from_port == to_port else f"{from_port}-{to_port}"
    return f"{protocol} port {span}"


def check_sg_no_ingress_from_anywhere(plan: Plan) -> list[Violation]:
    check = "sg_no_ingress_from_anywhere"
    violations: list[Violation] = []

    def inspect(resource: Resource, where: str, cidrs: list[Any], ports: str) -> None:
        for cidr in cidrs:
            if not isinstance(cidr, str) or not cidr:
                continue
            covers = _covers_everything(cidr)
            if covers is None:
                violations.append(Violation(check, resource.address, f"{where}{cidr!r} is not a CIDR block"))
            elif covers:
                violations.append(
                    Violation(check, resource.address, f"{where}allows ingress from {cidr} (anywhere), {ports}")
                )

    def unverifiable(resource: Resource, where: str) -> None:
        violations.append(
            Violation(
                check, resource.address, f"{where}ingress source is not known at plan time, so it cannot be verified"
            )
        )

    for group in plan.of_type("aws_security_group", "aws_default_security_group"):
        marker = group.after_unknown.get("ingress")
        if marker is True:
            # Computed and empty unless the configuration writes inline rules; only then is "unknown" a gap.
            if plan.configured(group.address, "ingress"):
                unverifiable(group, "inline ")
            continue
        for i, rule in enumerate(_as_list(group.after.get("ingress"))):
            if not isinstance(rule, dict):
                continue
            where = f"inline ingress rule {i}: "
            unknown = _element(marker, i)
            if _unknown_in(unknown.get("cidr_blocks")) or _unknown_in(unknown.get("ipv6_cidr_blocks")):
                unverifiable(group, where)
            inspect(
                group,
                where,
                [*_as_list(rule.get("cidr_blocks")), *_as_list(rule.get("ipv6_cidr_blocks"))],
                _ports(rule.get("protocol"), rule.get("from_port"), rule.get("to_port")),
            )

    for rule in plan.of_type("aws_security_group_rule"):
        if not (rule.unknown("type") or rule.after.get("type") == "ingress"):
            continue
        for attribute in ("cidr_blocks", "ipv6_cidr_blocks"):
            if _unknown_in(rule.after_unknown.get(attribute)) and plan.configured(rule.address, attribute):
                unverifiable(rule, "")
        inspect(
            rule,
            "",
            [*_as_list(rule.after.get("cidr_blocks")), *_as_list(rule.after.get("ipv6_cidr_blocks"))],
            _ports(rule.after.get("protocol"), rule.after.get("from_port"), rule.after.get("to_port")),
        )

    for rule in plan.of_type("aws_vpc_security_group_ingress_rule"):
        for attribute in ("cidr_ipv4", "cidr_ipv6"):
            if rule.unknown(attribute) and plan.configured(rule.address, attribute):
                unverifiable(rule, "")
        inspect(
            rule,
            "",
            [rule.after.get("cidr_ipv4"), rule.after.get("cidr_ipv6")],
            _ports(rule.after.get("ip_protocol"), rule.after.get("from_port"), rule.after.get("to_port")),
        )
    return violations


# --- GPU workers (AWS Batch) ----------------------------------------------------------------------------------

EC2_COMPUTE_TYPES = frozenset({"EC2", "SPOT"})
AWS_MANAGED_KEY = re.compile(r"(^|[:/])alias/aws/")


def _without_index(address: str) -> str:
    return re.sub(r"\[[^\]]*\]$", "", address)


def _launch_templates_of(
    plan: Plan, environment: Resource, spec: dict[str, Any], unknown: dict[str, Any]
) -> list[Resource] | str:
    """The planned launch templates that a compute environment's launch_template block names, or why there are none."""
    templates = plan.of_type("aws_launch_template")
    name, template_id = spec.get("launch_template_name"), spec.get("launch_template_id")
    if name and unknown.get("launch_template_name") is not True:
        found = [t for t in templates if t.after.get("name") == name]
        return found or f"launch template {name} is not in this plan, so its volumes cannot be verified"
    if template_id and unknown.get("launch_template_id") is not True:
        found = [t for t in templates if t.after.get("id") == template_id]
        return found or f"launch template {template_id} is not in this plan, so its volumes cannot be verified"
    # Created in the same run: the id is unknown until apply, so follow the configuration's reference instead.
    references = [
        *(plan.references(environment.address, "compute_resources", "launch_template", "launch_template_id") or []),
        *(plan.references(environment.address, "compute_resources", "launch_template", "launch_template_name") or []),
    ]
    module_prefix = environment.address[: environment.address.rfind(f"{environment.type}.")]
    targets = {module_prefix + ".".join(r.split(".")[:2]) for r in references if r.startswith("aws_launch_template.")}
    found = [t for t in templates if _without_index(t.address) in targets]
    return found or (
        "its launch template cannot be identified in the plan; reference aws_launch_template.<name> in the same "
        "module (or a name known at plan time)"
    )


def _volume_problems(template: Resource) -> list[str]:
    marker = template.after_unknown.get("block_device_mappings")
    if marker is True:
        return ["block device mappings are not known at plan time, so they cannot be verified"]
    problems: list[str] = []
    ebs_volumes = 0
    for i, mapping in enumerate(_as_list(template.after.get("block_device_mappings"))):
        ebs = (_as_list(mapping.get("ebs")) if isinstance(mapping, dict) else None) or [None]
        if not isinstance(ebs[0], dict):
            continue  # instance store or no_device: not an EBS volume
        ebs_volumes += 1
        device = mapping.get("device_name") or f"block device {i}"
        unknown = _element(_element(marker, i).get("ebs"), 0)
        key = ebs[0].get("kms_key_id")
        if unknown.get("encrypted") is True:
            problems.append(f"{device}: whether the EBS volume is encrypted is not known at plan time")
        elif str(ebs[0].get("encrypted")).lower() != "true":
            problems.append(f"{device}: EBS volume is not encrypted; set encrypted = true")
        elif unknown.get("kms_key_id") is True:
            continue  # set to a key created in the same run (its ARN is known only after apply)
        elif not key:
            problems.append(
                f"{device}: encrypted with the AWS-managed key aws/ebs; set kms_key_id to a customer-managed key"
            )
        elif AWS_MANAGED_KEY.search(str(key)):
            problems.append(f"{device}: kms_key_id {key} is an AWS-managed key; use a customer-managed key")
    if not ebs_volumes:
        problems.append(
            "sets no EBS volume, so the root volume is whatever the AMI gives (unencrypted unless the account "
            "encrypts EBS by default)"
        )
    return problems


def check_batch_volumes_encrypted(plan: Plan) -> list[Violation]:
    check = "batch_volumes_encrypted"
    violations: list[Violation] = []
    for environment in plan.of_type("aws_batch_compute_environment"):
        if str(environment.after.get("type", "")).upper() == "UNMANAGED":
            continue  # its instances are launched outside Batch (and outside this check)
        resources = environment.block("compute_resources")
        if resources is None:
            violations.append(Violation(check, environment.address, "compute resources are not known at plan time"))
            continue
        compute_unknown = _element(environment.after_unknown.get("compute_resources"), 0)
        if compute_unknown.get("type") is not True and str(resources.get("type")).upper() not in EC2_COMPUTE_TYPES:
            continue  # Fargate: no EC2 volumes, its ephemeral storage is encrypted by AWS
        spec = (_as_list(resources.get("launch_template")) or [None])[0]
        spec_unknown = _element(compute_unknown.get("launch_template"), 0)
        names_a_template = isinstance(spec, dict) and any(
            spec.get(key) or spec_unknown.get(key) is True for key in ("launch_template_id", "launch_template_name")
        )
        if not names_a_template:
            violations.append(
                Violation(
                    check,
                    environment.address,
                    "no launch template: its instances' volumes follow the AMI, unencrypted unless the account "
                    "encrypts EBS by default",
                )
            )
            continue
        templates = _launch_templates_of(plan, environment, spec, spec_unknown)
        if isinstance(templates, str):
            violations.append(Violation(check, environment.address, templates))
            continue
        for template in templates:
            for problem in _volume_problems(template):
                violations.append(
                    Violation(check, template.address, f"launch template of {environment.address}: {problem}")
                )
    return violations


# --- Airflow ------------------------------------------------------------------------------------------------------


def check_airflow_ui_private(plan: Plan) -> list[Violation]:
    check = "airflow_ui_private"
    violations: list[Violation] = []
    for environment in plan.of_type("aws_mwaa_environment"):
        if environment.unknown("webserver_access_mode"):
            # Unset, MWAA chooses PRIVATE_ONLY; set to something computed, it cannot be verified.
            if plan.configured(environment.address, "webserver_access_mode"):
                violations.append(
                    Violation(check, environment.address, "webserver_access_mode is not known at plan time")
                )
            continue
        mode = environment.after.get("webserver_access_mode")
        if mode is not None and mode != "PRIVATE_ONLY":
            violations.append(
                Violation(
                    check,
                    environment.address,
                    f"webserver_access_mode is {mode}: the Airflow UI has a public endpoint; use PRIVATE_ONLY and "
                    "reach it from inside the VPC",
                )
            )
    return violations


CHECKS: dict[str, Callable[[Plan], list[Violation]]] = {
    "s3_public_access_blocked": check_s3_public_access_blocked,
    "s3_no_public_grants": check_s3_no_public_grants,
    "s3_encrypted_with_kms": check_s3_encrypted_with_kms,
    "s3_tls_only": check_s3_tls_only,
    "opensearch_encrypted": check_opensearch_encrypted,
    "opensearch_https_only": check_opensearch_https_only,
    "opensearch_access_control": check_opensearch_access_control,
    "iam_no_wildcard_admin": check_iam_no_wildcard_admin,
    "sg_no_ingress_from_anywhere": check_sg_no_ingress_from_anywhere,
    "batch_volumes_encrypted": check_batch_volumes_encrypted,
    "airflow_ui_private": check_airflow_ui_private,
}


def run_checks(source: str | Path | dict[str, Any] | Plan) -> dict[str, list[Violation]]:
    """Run every check; returns check name -> violations (empty list: passed)."""
    plan = source if isinstance(source, Plan) else Plan.load(source)
    return {name: check(plan) for name, check in CHECKS.items()}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python infra/policy_check.py PLAN_JSON  (from terraform show -json)", file=sys.stderr)
        return 2
    try:
        plan = Plan.load(args[0])
    except PlanError as exc:
        print(f"policy_check: {exc}", file=sys.stderr)
        return 2
    results = run_checks(plan)
    failed = 0
    for name, violations in results.items():
        print(f"{'FAIL' if violations else 'ok  '} {name}")
        for violation in violations:
            print(f"     {violation.address}: {violation.message}")
        failed += bool(violations)
    counts = {t: len(plan.of_type(t)) for t in ("aws_s3_bucket", *SEARCH_DOMAIN_TYPES)}
    print(
        f"{len(results) - failed}/{len(results)} checks passed "
        f"({counts['aws_s3_bucket']} buckets, {counts['aws_opensearch_domain'] + counts['aws_elasticsearch_domain']} "
        f"search domains, {sum(1 for _ in policy_documents(plan))} policy documents)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
