from django.urls import path

from llm import anthropic_messages, apis

urlpatterns = [
    path("<str:task_code>/chat/completions", apis.chat_completions, name="chat-completions"),
    # Anthropic's Messages API: the SDK appends /v1/messages to its base URL (".../v1/{TASK}").
    path("<str:task_code>/v1/messages", anthropic_messages.messages, name="anthropic-messages"),
    path("<str:task_code>/messages", anthropic_messages.messages, name="messages"),
    path("<str:task_code>/models", apis.models, name="models"),
]
