"""A featureless relay on the gateway's own stack (Django, django-ninja, Daphne, httpx): the bench's ceiling."""
