"""The LangGraph Functional API app (``@entrypoint``/``@task``, never ``langgraph.graph``) that the
in-process and zero-code tests run in a fresh interpreter: a task with a RetryPolicy calls a tool
per city; ``attempts`` records each run of the task, ``run_flow(**limits)`` the refusal's reason."""

FUNCTIONAL_API_APP = """
from langchain_core.tools import tool
from langgraph.func import entrypoint, task  # and never langgraph.graph
from langgraph.types import RetryPolicy

attempts = []

@tool
def get_weather(city: str) -> str:
    "The weather in a city."
    return "sunny"

@task(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False, retry_on=Exception))
def lookup(city: str) -> str:
    attempts.append(city)
    return get_weather.invoke({"city": city})

@entrypoint()
def my_flow(cities: list[str]) -> list[str]:
    return [lookup(city).result() for city in cities]

def run_flow(**limits):
    try:
        with budgetspan.run("wf", **limits):
            my_flow.invoke(["paris", "oslo"])
    except budgetspan.BudgetExhausted as e:
        return e.reason
    return None
"""
