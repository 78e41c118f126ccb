from django.apps import AppConfig


class LLMGatewayConfig(AppConfig):
    name = "llmgateway"
    verbose_name = "LLM Gateway"
