package demo

import kotlinx.coroutines.*

sealed class Event {
    data class Click(val x: Int, val y: Int) : Event()
    object Close : Event()
}

fun describe(e: Event): String = when (e) {
    is Event.Click -> "click at (${e.x}, ${e.y})"
    Event.Close -> "close"
}

suspend fun main() = coroutineScope {
    val jobs = (1..3).map { i -> async { delay(10L * i); i * i } }
    println(jobs.awaitAll().sum())
    println(listOf(Event.Click(1, 2), Event.Close).joinToString { describe(it) })
}
