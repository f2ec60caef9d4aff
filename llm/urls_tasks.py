from django.urls import path

from llm import apis_tasks

urlpatterns = [
    path("prior-art/", apis_tasks.prior_art, name="task-prior-art"),
    path("drafting/", apis_tasks.drafting, name="task-drafting"),
    path("diagrams/", apis_tasks.diagrams, name="task-diagrams"),
]
