# raft_archive.cmake - hamr's copy of Debian's libraft.a, with the fast CRC.
#
#   cmake -DIN=libraft.a -DOUT=libraft-hamr.a -DAR=ar -DOBJCOPY=objcopy -DNM=nm
#         -DOBJECTS="a.o;b.o" -P raft_archive.cmake
#
# Copies IN to OUT, renames byteCrc32 in the member that defines it to
# raft_byte_crc32_reference (nothing else in the archive changes: the other
# members keep calling byteCrc32) and adds OBJECTS, which define the new
# byteCrc32 (consensus/consensus_crc.c). Fails with a message naming the
# archive when it does not look like libraft 0.15's.
foreach(var IN ITEMS IN OUT AR OBJCOPY NM OBJECTS)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "raft_archive.cmake: -D${var}= is required")
  endif()
endforeach()

execute_process(COMMAND ${NM} -A ${IN} OUTPUT_VARIABLE symbols ERROR_QUIET
                RESULT_VARIABLE rv)
string(REGEX MATCH "[^\n]*:([^:\n]+):[0-9a-f]+ T byteCrc32\n" line "${symbols}")
if(NOT rv EQUAL 0 OR line STREQUAL "")
  message(FATAL_ERROR "${IN}: no member defines byteCrc32; hamr expects libraft 0.15 "
                      "(Debian 12's libraft-dev)")
endif()
set(member "${CMAKE_MATCH_1}")

get_filename_component(work "${OUT}.d" ABSOLUTE)
file(REMOVE_RECURSE "${work}")
file(MAKE_DIRECTORY "${work}")
file(COPY_FILE "${IN}" "${OUT}.tmp")
execute_process(COMMAND ${AR} x ${IN} ${member} WORKING_DIRECTORY "${work}"
                COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${OBJCOPY} --redefine-sym byteCrc32=raft_byte_crc32_reference
                        ${member} WORKING_DIRECTORY "${work}" COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${AR} r "${OUT}.tmp" ${member} WORKING_DIRECTORY "${work}"
                COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${AR} rs "${OUT}.tmp" ${OBJECTS} COMMAND_ERROR_IS_FATAL ANY)
file(RENAME "${OUT}.tmp" "${OUT}")
file(REMOVE_RECURSE "${work}")
