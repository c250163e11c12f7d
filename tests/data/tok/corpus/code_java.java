package io.kvgate.example;

import java.util.*;
import java.util.stream.Collectors;

public final class WordCount {
    private WordCount() {}

    public static Map<String, Long> count(List<String> lines) {
        return lines.stream()
                .flatMap(l -> Arrays.stream(l.split("\\s+")))
                .filter(w -> !w.isBlank())
                .collect(Collectors.groupingBy(String::toLowerCase, TreeMap::new, Collectors.counting()));
    }

    @Override
    public String toString() { return "WordCount@" + Integer.toHexString(hashCode()); }

    public static void main(String[] args) throws Exception {
        System.out.println(count(List.of("a b  a", "B\tc")));
    }
}
