# frozen_string_literal: true

module Billing
  class Invoice
    attr_reader :lines

    def initialize(lines = [])
      @lines = lines
    end

    def total
      lines.sum { |l| l[:qty] * l[:price] }.round(2)
    end

    def to_s = "#<Invoice total=#{total} lines=#{lines.size}>"
  end
end

inv = Billing::Invoice.new([{ qty: 2, price: 9.99 }, { qty: 1, price: 0.5 }])
puts inv unless inv.lines.empty?
%w[a b c].each_with_index { |x, i| puts "#{i}: #{x}" }
