from django.urls import path

from llm import apis

urlpatterns = [
    path("<str:task_code>/chat/completions", apis.chat_completions, name="chat-completions"),
    path("<str:task_code>/models", apis.models, name="models"),
]
